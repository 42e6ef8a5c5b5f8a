"""A real scored catalog for the web explorer's tests, built once per session: the 180 fixture rows
as four datasets plus a hostile sample, MiniLM neighbours, SmolLM2 scores under three scorers
(chat; Alpaca; a 96-token limit that leaves some samples unscorable), and two selections."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import CliRun, fixture_records, write_jsonl

# Rows of tests/data/mixed_180.jsonl by source (see tests/data/README.md).
DATASETS = {"code_alpaca": (0, 50), "dolly": (50, 100), "roleplay": (100, 140), "toolformer": (140, 180)}
SCRIPT = '<script>window.__pwned = 1; document.title = "pwned"</script>'
IMG = "<img src=x onerror=\"window.__pwned = 2; document.title = 'pwned'\">"
HOSTILE = {
    "instruction": f"Explain what this HTML does: {SCRIPT} {IMG}",
    "input": "",
    "output": f"It runs script: {SCRIPT} and {IMG} **bold** [x](javascript:window.__pwned=3) "
    '<svg onload="window.__pwned = 4"></svg>',
}
MODEL = "smollm2-135m"


def run_cli(catalog: Path, *args: str) -> str:
    result = CliRun(catalog)(*args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="session")
def explored(tmp_path_factory) -> Path:
    """The catalog directory (scorers 1: chat, 2: alpaca, 3: chat with max length 96).

    MIWV_WEB_TEST_CATALOG=DIR builds it in DIR once and reuses it on later runs (a copy is
    used, so tests that add a selection leave DIR as it was); it takes minutes to score.
    """
    root = tmp_path_factory.mktemp("web")
    catalog = root / "catalog"
    kept = os.environ.get("MIWV_WEB_TEST_CATALOG")
    if kept and (Path(kept) / "catalog.duckdb").exists():
        shutil.copytree(kept, catalog)
        return catalog
    records = fixture_records()
    for name, (start, end) in DATASETS.items():
        run_cli(catalog, "ingest", str(write_jsonl(root / f"{name}.jsonl", records[start:end])), "--dataset", name)
    run_cli(catalog, "ingest", str(write_jsonl(root / "hostile.jsonl", [HOSTILE])), "--dataset", "hostile")
    run_cli(catalog, "embed")
    run_cli(catalog, "score", "--model", MODEL, "--limit", "10")
    run_cli(catalog, "score", "--model", MODEL, "--dataset", "hostile")
    run_cli(catalog, "score", "--model", MODEL, "--template", "alpaca", "--limit", "5")
    run_cli(catalog, "score", "--model", MODEL, "--max-length", "96", "--limit", "8")
    scored = "sample_id IN (SELECT sample_id FROM miwv_scores WHERE scorer_id = 1)"
    run_cli(catalog, "select", "--model", MODEL, "--scorer", "1", "--top-k", "5", "--where", scored)
    run_cli(catalog, "select", "--model", MODEL, "--scorer", "1", "--top-k", "5", "--strategy", "zero-shot-loss",
            "--where", scored)  # fmt: skip
    if kept:
        shutil.copytree(catalog, kept, dirs_exist_ok=True)
    return catalog


def sql(catalog: Path, query: str) -> list[dict]:
    """Rows of a read-only query, through `cli.py sql --json` (what a user would run)."""
    output = run_cli(catalog, "sql", query, "--json")
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def hostile_id(explored: Path) -> int:
    return sql(explored, "SELECT sample_id FROM samples WHERE list_contains(datasets, 'hostile')")[0]["sample_id"]
