"""Driver at scale: planning a score run over a pool of 1M pending samples.

A synthetic catalog (short texts, a random neighbour graph) is written straight into DuckDB;
then the driver's planning runs as `score` runs it: the pool and its needs from SQL (ids
only), the units by neighbour-graph component, and the rows of the first unit read as a
worker would get them. Reports time and peak RSS of each step (targets: < 60 s, < 2 GB).

Run: .venv/bin/python bench/plan_scale.py [--samples 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402

from bench.common import save, timer  # noqa: E402
from catalog import Catalog, db  # noqa: E402
from catalog.score import pending_rows, plan_pool  # noqa: E402
from scoring.units import plan_units, unit_size  # noqa: E402


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def build(catalog: Catalog, n: int) -> None:
    """n samples with short chat messages, one embedder, and a random neighbour link each."""
    with catalog.write() as conn:
        db.execute(
            conn,
            """INSERT INTO ingest_batch VALUES (1, 'synthetic', 'synth', 'jsonl', 'alpaca', 'x', now(), now(),
                                               $n, $n, 0, 0)""",
            {"n": n},
        )
        db.execute(
            conn,
            """INSERT INTO sample SELECT i, [{'role': 'user', 'content': 'question ' || i},
                                        {'role': 'assistant', 'content': 'answer ' || i}],
                                  'question ' || i, '', 'answer ' || i, 'question ' || i, 1, NULL, now(), 1
               FROM range(1, $n + 1) t(i)""",
            {"n": n},
        )
        db.execute(conn, "INSERT INTO membership SELECT sample_id, 'synth', 1, sample_id FROM sample")
        db.execute(conn, "INSERT INTO embedder VALUES (1, 'minilm', '/m', 384, 'mean', true, 256, 'f', now(), NULL)")
        db.execute(
            conn, "INSERT INTO neighbour_run VALUES (1, 1, 'exact', 'full', $n, $n, $n, now(), now(), '')", {"n": n}
        )
        rng = np.random.default_rng(0)
        neighbours = rng.integers(1, n + 1, n)
        neighbours[neighbours == np.arange(1, n + 1)] = 1

        links = pa.table(
            {
                "sample_id": pa.array(np.arange(1, n + 1), pa.int64()),
                "embedder_id": pa.array(np.ones(n, np.int32)),
                "neighbour_id": pa.array(neighbours, pa.int64()),
                "similarity": pa.array(rng.random(n)),
                "run_id": pa.array(np.ones(n, np.int32)),
                "computed_at": pa.array(np.full(n, np.datetime64("2026-11-28T00:00:00", "us"))),
            }
        )
        db.insert_arrow(conn, "neighbour_link", links)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    results: dict = {"samples": args.samples, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp) / "catalog")
        with timer(results, "build_catalog_s"):
            build(catalog, args.samples)
        results["rss_before_planning_gb"] = round(psutil.Process().memory_info().rss / 2**30, 2)
        started = time.perf_counter()
        with timer(results, "plan_pool_s"):
            plan = plan_pool(catalog, scorer_id=1, embedder_id=1)
        with timer(results, "plan_units_s"):
            units = plan_units(plan, unit_size(len(plan.ids), args.workers))
        with timer(results, "first_unit_rows_s"):
            rows = pending_rows(catalog, 1, 1, units[0])
        results["planning_s"] = round(time.perf_counter() - started, 2)
        results["pending"] = len(plan.ids)
        results["units"] = len(units)
        results["unit_size"] = len(units[0])
        results["first_unit_rows"] = len(rows)
        results["peak_rss_gb"] = peak_rss_gb()
    save("plan_scale", results)


if __name__ == "__main__":
    main()
