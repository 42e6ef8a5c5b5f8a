"""A real scored catalog for the web explorer's tests, built once per session: the 180 fixture rows
as four datasets plus a hostile sample, MiniLM neighbours, SmolLM2 scores under three scorers
(chat; Alpaca; a 96-token limit that leaves some samples unscorable), and two selections; and a
smaller catalog whose scores come in two neighbour scopes (`scoped`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from catalog import Catalog, current_scores, db
from catalog.embed import embedders
from scoring.examples import nearest_examples
from scoring.neighbours import current_points, link_neighbours
from tests.conftest import CliRun, fixture_records, write_jsonl
from tests.test_lifecycle_views import shared_rows

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


@contextmanager
def served(catalog: Path) -> Iterator[str]:
    """The explorer over `catalog` on a free loopback port, served by uvicorn in a thread; its URL."""
    import uvicorn

    from web.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(Catalog(catalog)), host="127.0.0.1", port=port, log_level="warning")
    app = uvicorn.Server(config)
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not app.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.should_exit = True
        thread.join(10)


def sql(catalog: Path, query: str) -> list[dict]:
    """Rows of a read-only query, through `cli.py sql --json` (what a user would run)."""
    output = run_cli(catalog, "sql", query, "--json")
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def hostile_id(explored: Path) -> int:
    return sql(explored, "SELECT sample_id FROM samples WHERE list_contains(datasets, 'hostile')")[0]["sample_id"]


# The scoped catalog's datasets: `mixed` shares SHARED Code Alpaca rows with `code`.
SHARED = 8
SCOPED_DATASETS = ("code", "mixed")


@pytest.fixture(scope="session")
def scoped(tmp_path_factory) -> Path:
    """A catalog in both neighbour scopes: 24 Code Alpaca rows as `code`, its last 8 with 16 Dolly
    rows as `mixed`, MiniLM links catalog-wide (`embed`) and within each dataset (the library's
    dataset scope), and scorer 1 of
    MODEL with losses by SQL (no LM) for every sample and each of its examples, so every sample
    has a current score in each of its scopes; the catalog and `code` scopes also list each sample's
    2 nearest examples (as `score --examples 2` would), so they have stability figures."""
    root = tmp_path_factory.mktemp("scoped")
    catalog = root / "catalog"
    code = shared_rows("code_alpaca_2k.jsonl", 24)
    rows = {"code": code, "mixed": code[-SHARED:] + shared_rows("dolly_3k_alpagasus.jsonl", 16)}
    for name in SCOPED_DATASETS:
        run_cli(catalog, "ingest", str(write_jsonl(root / f"{name}.jsonl", rows[name])), "--dataset", name)
    run_cli(catalog, "embed")
    store = Catalog(catalog)
    link_neighbours(store, embedders(store)[0], scope="dataset")
    for scope_dataset in ("", "code"):
        list_examples(store, scope_dataset)
    add_scores(store)
    return catalog


def list_examples(store: Catalog, scope_dataset: str, k: int = 2) -> None:
    """Each sample's `k` nearest examples in the scope, written as its example list (every sample here
    has `k` others in each scope)."""
    embedder = embedders(store)[0]
    points = current_points(store, embedder.vectors(store).load(), scope_dataset)
    examples, similarity = nearest_examples(points, points, k)
    listed = pa.table(
        {
            "sample_id": np.repeat(points.ids, k),
            "rank": np.tile(np.arange(1, k + 1), len(points.ids)),
            "neighbour_id": examples.ravel(),
            "similarity": similarity.ravel(),
        }
    )
    with store.write() as conn, db.registered(conn, "_listed", listed):
        db.execute(
            conn,
            "INSERT INTO example_list SELECT sample_id, $embedder, $scope, rank, neighbour_id, similarity, now() "
            "FROM _listed",
            {"embedder": embedder.embedder_id, "scope": scope_dataset},
        )


def add_scores(store: Catalog) -> None:
    """Scorer 1 of MODEL: a zero-shot loss per sample and a one-shot loss per (sample, example) of any
    scope or list, drawn from hashes (by SQL, as tests/test_lifecycle_views.py writes them), then the current scores."""
    with store.write() as conn:
        db.execute(
            conn,
            f"""INSERT INTO scorer VALUES (1, '{MODEL}', 'SmolLM2.gguf', 'beef', 'chat', 4096, 'float32', now(), 2,
                                           'c0ffee', NULL);
                INSERT INTO score_run (run_id, scorer_id, embedder_id, device, pool, samples, passes, tokens_run,
                                       started_at, finished_at, workers)
                       VALUES (1, 1, 1, 'cpu', 40, 40, 80, 9000, now(), now(), 1);
                INSERT INTO zero_shot_loss SELECT sample_id, 1, 'ok', 10 * loss, 10, loss, 100, 1, now()
                FROM (SELECT sample_id, 0.5 + 3 * (hash(sample_id) % 1000) / 1000 AS loss FROM samples);
                INSERT INTO one_shot_loss SELECT sample_id, 1, neighbour_id, 'ok', 10 * loss, 10, loss, 200, 1, now(),
                                                 false
                FROM (SELECT DISTINCT sample_id, neighbour_id,
                             0.3 + 2.5 * (hash(sample_id, neighbour_id) % 1000) / 1000 AS loss
                      FROM (SELECT sample_id, neighbour_id FROM neighbour_link WHERE neighbour_id IS NOT NULL
                            UNION SELECT sample_id, neighbour_id FROM example_list))""",
        )
        current_scores.rebuild(conn)
