"""The pure parts of scaling out: units along the neighbour graph, worker placement, the GPU
token budget, the halving retry, the neighbour search's device, and the GPU check's smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from catalog.errors import UserError
from catalog.score import NO_NEIGHBOUR, PoolPlan
from scoring.batching import CPU_BATCHING, bytes_per_token, gpu_token_budget
from scoring.neighbours import Points, nearest
from scoring.ray_pool import Placement, place
from scoring.units import plan_units, unit_size
from tests.conftest import REPO


def test_units_keep_neighbour_components_together_and_cover_the_pool_once():
    ids = np.arange(10, 110, dtype=np.int64)
    # pairs (10, 11), (12, 13), ... link to each other; sample 30 links outside the pool; 31 to none
    neighbour_ids = ids ^ 1
    neighbour_ids[ids == 30] = 5
    neighbour_ids[ids == 31] = NO_NEIGHBOUR
    flags = np.ones(len(ids), bool)
    units = plan_units(PoolPlan(100, 0, ids, neighbour_ids, flags, flags), 4)
    assert sorted(np.concatenate(units).tolist()) == ids.tolist() and all(len(u) <= 4 for u in units)
    unit_of = {int(s): i for i, unit in enumerate(units) for s in unit}
    assert all(unit_of[int(s)] == unit_of[int(s) ^ 1] for s in ids if s not in (30, 31))
    assert unit_size(100_000, 1) == 512 and unit_size(30, 2) == 8 and unit_size(10_000, 8) == 313


def test_workers_are_placed_per_gpu_or_split_the_cores():
    assert place(cpus=64, gpus=8, workers=None, gpus_per_worker=1, device="auto") == Placement(8, "cuda", 1, 1)
    assert place(cpus=64, gpus=8, workers=None, gpus_per_worker=2, device="auto") == Placement(4, "cuda", 2, 1)
    assert place(cpus=2, gpus=0, workers=2, gpus_per_worker=1, device="auto") == Placement(2, "cpu", 0, 1)
    assert place(cpus=16, gpus=8, workers=4, gpus_per_worker=1, device="cpu") == Placement(4, "cpu", 0, 4)
    with pytest.raises(UserError, match="offers 8 GPUs"):
        place(cpus=64, gpus=8, workers=8, gpus_per_worker=2, device="auto")
    with pytest.raises(UserError, match="offers no GPU"):
        place(cpus=2, gpus=0, workers=None, gpus_per_worker=1, device="cuda")


def test_the_gpu_token_budget_follows_free_memory_and_model_size():
    qwen_7b = bytes_per_token(layers=28, hidden=3584, kv_heads=4, head_dim=128, intermediate=18944, dtype_bytes=2)
    assert qwen_7b == 2 * 28 * 2 * 4 * 128 * 2 + (4 * 3584 + 3 * 18944) * 2 == 257_024
    weights, head = 7_615_616_512 * 2, 2 * 2048 * 152_064 * 4
    assert gpu_token_budget(79 * 10**9, weights, qwen_7b, head) == 65_536  # an H100: the ceiling
    assert gpu_token_budget(23 * 10**9, weights, qwen_7b, head) == 16_384  # a 24 GB card
    assert gpu_token_budget(16 * 10**9, weights, qwen_7b, head) == 512  # barely fits: the floor


def test_halving_reaches_one_row():
    shapes = [CPU_BATCHING]
    while shapes[-1].max_rows > 1:
        shapes.append(shapes[-1].halved())
    assert [s.max_rows for s in shapes] == [16, 8, 4, 2, 1]
    assert [s.token_budget for s in shapes] == [2048, 1024, 512, 256, 128]


def test_the_search_device_is_honoured_and_changes_no_link():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = Points(np.arange(300, dtype=np.int64), vectors, np.arange(300) // 2)
    on_cpu = nearest(points, points, rows_per_block=64)
    on_meta = "meta"  # a device that holds no data: asking for it must reach torch
    with pytest.raises((NotImplementedError, RuntimeError)):
        nearest(points, points, rows_per_block=64, device=on_meta)
    again = nearest(points, points, rows_per_block=37, device="cpu")
    assert np.array_equal(on_cpu.ids, again.ids) and np.array_equal(on_cpu.similarity, again.similarity)


@pytest.mark.slow
def test_the_gpu_check_runs_in_smoke_mode():
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    assert results["losses"]["max_abs_diff_cpu_float32"] < 1e-4
    assert results["throughput"]["ours_tokens_per_s"] > 0 and results["throughput"]["naive_tokens_per_s"] > 0
