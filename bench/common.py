"""Helpers shared by the benchmarks: real rows from ../shared/data, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import random
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MIWV_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "bench" / "out"


def shared_records() -> list[dict]:
    """Every row of the four shared Alpaca files (15,831 rows)."""
    return [
        json.loads(line)
        for path in sorted(SHARED_DATA.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def sampled_records(n: int, seed: int = 0) -> list[dict]:
    """`n` shared rows with a non-empty response, drawn with a fixed seed (the same rows each run)."""
    rows = [r for r in shared_records() if r["output"].strip()]
    return random.Random(seed).sample(rows, n)


@contextmanager
def timer(results: dict, key: str):
    started = time.perf_counter()
    yield
    results[key] = round(time.perf_counter() - started, 3)


def save(name: str, results: dict) -> None:
    """Print `results` and keep them in bench/out/NAME.json with the machine they ran on."""
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"bench": name, "machine": f"{platform.machine()}, {os.cpu_count()} cpus", **results}
    (OUT / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
