"""examples/k_sweep.sh on the bundled CPU models (a few training steps): nested top-K% selections,
one run each, reference losses on held-out rows, and `report`'s reference loss against K."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import miwv
from tests.conftest import REPO, SHARED_DATA, write_jsonl

pytestmark = pytest.mark.slow  # runs the script: SmolLM2 and MiniLM in subprocesses

SCRIPT = REPO / "examples" / "k_sweep.sh"


def test_the_sweep_trains_nested_selections_and_reports_reference_loss_against_k(tmp_path):
    rows = [json.loads(line) for line in (SHARED_DATA / "dolly_3k_alpagasus.jsonl").read_text().splitlines()[:35]]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHON": sys.executable,
        "DATA": str(write_jsonl(tmp_path / "pool.jsonl", rows[:30])),
        "HELDOUT": str(write_jsonl(tmp_path / "held.jsonl", rows[30:])),
        "CATALOG": str(tmp_path / "catalog"),
        "OUT": str(tmp_path / "report"),
        "PERCENTS": "10 20",
        "TRAIN_FLAGS": "--max-steps 1 --batch-size 1 --gradient-accumulation 1 --lr 1e-3",
    }
    done = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]

    cat = miwv.open(tmp_path / "catalog")
    members = [
        set(cat.sql(f"SELECT sample_id FROM selection_member WHERE selection_id = {i}")["sample_id"].to_pylist())
        for i in (1, 2)
    ]
    assert (len(members[0]), len(members[1])) == (3, 6) and members[0] < members[1]  # nested: top 10% in top 20%
    per_run = cat.sql(
        "SELECT r.selection_id, avg(l.loss) AS loss FROM train_run r JOIN reference_loss l USING (run_id) "
        "GROUP BY ALL ORDER BY selection_id"
    ).to_pylist()
    assert [row["selection_id"] for row in per_run] == [1, 2]

    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## Selection size" in summary and (tmp_path / "report" / "selection_size.png").stat().st_size > 0
    table = [line.split(" | ") for line in summary.splitlines() if line.startswith("| miwv | ")]
    assert [(float(cells[1]), int(cells[2]), int(cells[6])) for cells in table] == [(10.0, 3, 1), (20.0, 6, 1)]
    assert [float(cells[7]) for cells in table] == pytest.approx([row["loss"] for row in per_run], abs=1e-4)
