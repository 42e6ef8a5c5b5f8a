"""Scaling: the same real samples scored in-process, on 1 Ray worker and on 2, in one run.

Data: N real samples drawn (seeded) from ../shared/data, ingested, embedded and linked once;
each configuration scores a copy of that catalog from scratch with SmolLM2 on this CPU.
Reported per configuration: wall time (model loading included), compute time (from every
worker having loaded the model to the last result), tokens/s over the compute time, and for
Ray the start-up of Ray itself, so the throughput once started can be compared with
in-process (target: 2 workers >= 0.85x in-process on this 2-core CPU).
Also the machine's load average at the start and end: it is shared.

Run: .venv/bin/python bench/score_scaling.py [--samples 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import sampled_records, save  # noqa: E402
from catalog import Catalog  # noqa: E402
from catalog.ingest import ingest_file  # noqa: E402
from scoring.embed import embed_missing  # noqa: E402
from scoring.neighbours import link_neighbours  # noqa: E402
from scoring.score import score_catalog  # noqa: E402
from tests.conftest import write_jsonl  # noqa: E402


def run(base: Path, copy: Path, workers: int | None) -> dict:
    """Score a fresh copy of `base`; Ray is started (and its start timed) before the run."""
    shutil.copytree(base, copy)
    out: dict = {}
    if workers:
        import ray

        from scoring.ray_pool import LOCAL_OBJECT_STORE, worker_env

        started = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE,
            runtime_env={"env_vars": worker_env()},
            log_to_driver=False,
        )
        out["ray_start_s"] = round(time.perf_counter() - started, 2)
    try:
        result = score_catalog(Catalog(copy), "smollm2-135m", device="cpu", workers=workers)
    finally:
        if workers:
            import ray

            ray.shutdown()
    out |= {
        "wall_s": round(result.seconds, 2),
        "compute_s": round(result.compute_seconds, 2),
        "tokens_run": result.tokens_run,
        "passes": result.passes,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    rows = sampled_records(args.samples)
    results: dict = {"samples": args.samples, "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        catalog = Catalog(base)
        ingest_file(catalog, write_jsonl(Path(tmp) / "rows.jsonl", rows), "bench")
        link_neighbours(catalog, embed_missing(catalog).embedder)
        for name, workers in (("in_process", None), ("workers_1", 1), ("workers_2", 2)):
            results[name] = run(base, Path(tmp) / name, workers)
    results["load_average_end"] = os.getloadavg()
    here = results["in_process"]["tokens_run"] / results["in_process"]["compute_s"]
    for name in ("in_process", "workers_1", "workers_2"):
        tokens_per_s = results[name]["tokens_run"] / results[name]["compute_s"]  # once the models are loaded
        results[name]["tokens_per_s"] = round(tokens_per_s, 1)
        results[name]["vs_in_process"] = round(tokens_per_s / here, 2)
    save("score_scaling", results)


if __name__ == "__main__":
    main()
