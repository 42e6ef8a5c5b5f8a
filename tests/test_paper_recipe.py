"""examples/paper_alpaca.sh, the paper's recipe, run as written on the bundled CPU models: only its
environment differs from the paper's run (model, embedder, data, percentages)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import miwv
from tests.conftest import REPO, SHARED_DATA, CliRun, write_jsonl

pytestmark = pytest.mark.slow  # runs the script: SmolLM2 and MiniLM in subprocesses

SCRIPT = REPO / "examples" / "paper_alpaca.sh"
DATASET = "alpaca"
# Folder the script writes -> (strategy, percent): the MIWV selections at each of PERCENTS, the
# three ablations at the first.
EXPORTS = {
    "miwv_top10": ("miwv", 10),
    "miwv_top20": ("miwv", 20),
    "random_top10": ("random", 10),
    "zero_shot_loss_top10": ("zero-shot-loss", 10),
    "low_miwv_top10": ("low-miwv", 10),
}
SCORED = 30  # of the dataset's 40 members (score --limit): selections take K% of all 40 all the same
# The miwv_scores column each scored strategy ranks on, and whether it keeps the highest.
RANKED_ON = {"miwv": ("miwv", True), "zero-shot-loss": ("zero_shot_loss", True), "low-miwv": ("miwv", False)}


def first_rows(path: Path, n: int) -> list[dict]:
    with path.open(encoding="utf-8") as rows:
        return [json.loads(next(rows)) for _ in range(n)]


def exported_rows(folder: Path) -> list[dict]:
    """The rows LLaMA-Factory would read from the dataset folder `folder` (its entry is the folder's name)."""
    entry = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))[folder.name]
    lines = (folder / entry["file_name"]).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def alpaca_fields(rows: list[dict]) -> list[tuple]:
    """The rows' (instruction, input, output), sorted: what a selection and its export must agree on."""
    return sorted((row["instruction"], row["input"], row["output"]) for row in rows)


def run_recipe(tmp_path: Path, catalog: Path, out: Path) -> None:
    """The script over 30 Code Alpaca rows and 10 Dolly rows (dataset `alpaca`), in a catalog that
    already holds 20 Dolly rows as dataset `dolly` (10 shared): catalog-wide examples could come
    from `dolly`, the recipe's may not."""
    dolly = first_rows(SHARED_DATA / "dolly_3k_alpagasus.jsonl", 20)
    data = write_jsonl(tmp_path / "alpaca.jsonl", first_rows(SHARED_DATA / "code_alpaca_2k.jsonl", 30) + dolly[:10])
    ingested = CliRun(catalog)("ingest", write_jsonl(tmp_path / "dolly.jsonl", dolly), "--dataset", "dolly")
    assert ingested.exit_code == 0, ingested.output
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MODEL": "smollm2-135m",
        "EMBEDDER": "minilm",
        "DATA": str(data),
        "DATASET": DATASET,
        "TEMPLATE": "alpaca",
        "PERCENTS": "10 20",
        "OUT": str(out),
        "CATALOG": str(catalog),
        "PYTHON": sys.executable,
        "SCORE_FLAGS": f"--limit {SCORED} --max-batch 8",  # two flags: the passthrough splits them
    }
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def test_paper_recipe_runs_on_cpu_and_exports_each_selection(tmp_path):
    catalog_dir, out = tmp_path / "catalog", tmp_path / "out"
    run_recipe(tmp_path, catalog_dir, out)
    catalog = miwv.open(catalog_dir)

    members = catalog.sql(f"SELECT count(*) AS n FROM samples WHERE list_contains(datasets, '{DATASET}')")
    n_members = members.column("n")[0].as_py()
    assert n_members == 40
    scores = catalog.sql(
        f"""SELECT count(*) AS n, count(*) FILTER (WHERE status = 'ok') AS ok,
                   count(*) FILTER (WHERE neighbour_id NOT IN (
                       SELECT sample_id FROM samples WHERE list_contains(datasets, '{DATASET}'))) AS outside
            FROM miwv_scores WHERE scope = 'dataset' AND scope_dataset = '{DATASET}'"""
    ).to_pylist()[0]
    assert scores["n"] == SCORED and scores["ok"] > 0
    assert scores["outside"] == 0  # every example is another member of the dataset

    recorded = {Path(s["output"]).name: s for s in catalog.selections()}
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORTS)
    for name, (strategy, percent) in EXPORTS.items():
        selection = recorded[name]
        assert (selection["strategy"], selection["dataset"], selection["top_percent"]) == (strategy, DATASET, percent)
        assert selection["selected"] == max(1, math.floor(n_members * percent / 100 + 0.5))  # half up
        chosen = catalog.sql(
            f"""SELECT s.instruction, s.input, s.output FROM selection_member m JOIN samples s USING (sample_id)
                WHERE m.selection_id = {selection["selection_id"]}"""
        ).to_pylist()
        written = exported_rows(out / name)
        assert len(written) == len(chosen) == selection["selected"]
        assert alpaca_fields(written) == alpaca_fields(chosen)
        if strategy in RANKED_ON:
            assert_ranked_on_dataset_scope(catalog, selection["selection_id"], *RANKED_ON[strategy])


def assert_ranked_on_dataset_scope(catalog, selection_id: int, column: str, highest: bool) -> None:
    """The selection's scores are its scorer's dataset-scope rows of miwv_scores, and no member of
    the dataset left out ranks above a chosen one."""
    rows = catalog.sql(
        f"""SELECT m.{column} AS value, sm.score, sm.sample_id IS NOT NULL AS chosen
            FROM miwv_scores m
            JOIN selection s ON s.selection_id = {selection_id} AND m.scorer_id = s.scorer_id
                            AND m.embedder = s.embedder
            LEFT JOIN selection_member sm ON sm.selection_id = s.selection_id AND sm.sample_id = m.sample_id
            WHERE m.scope = 'dataset' AND m.scope_dataset = '{DATASET}' AND m.status = 'ok'"""
    ).to_pylist()
    chosen = [r for r in rows if r["chosen"]]
    left = [r["value"] for r in rows if not r["chosen"]]
    assert chosen and all(r["score"] == r["value"] for r in chosen)
    sign = 1 if highest else -1
    assert min(sign * r["value"] for r in chosen) >= max(sign * v for v in left)
