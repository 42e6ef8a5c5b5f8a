"""Neighbour search speed, all figures from one run.

1. Exact all-rows top-1 over 50k x 384 synthetic unit vectors (scoring.neighbours.nearest) vs a plain
   blocked `X @ X.T` + row max with the same block size.
2. Memory at 500k rows: peak RSS while computing the first blocks (block size from available memory).
3. Through the real job (`link_neighbours` on a catalog): full recompute of 50k samples vs an
   incremental run after adding 1% new samples, then a rebuild that must write nothing.
4. The LanceDB ANN path (IVF_HNSW_SQ, re-ranked exactly): recall@1 against exact links and time,
   on 20k random unit vectors (no structure: the hard case), 20k clustered ones, and the real
   MiniLM vectors of an existing catalog (`--real-catalog demo-catalog`, on a temporary copy).

Run: .venv/bin/python bench/neighbours_speed.py [--skip-ann] [--real-catalog DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save, timer  # noqa: E402
from catalog import Catalog, db  # noqa: E402
from catalog.embed import EmbedderRow, find_embedder, register_embedder  # noqa: E402
from catalog.ingest import ingest_file  # noqa: E402
from scoring.neighbours import (  # noqa: E402
    Points,
    block_rows,
    link_neighbours,  # noqa: E402
    nearest,
)

N, DIM = 50_000, 384


def unit_rows(n: int, seed: int, clusters: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM))
    if clusters:
        x = rng.standard_normal((clusters, DIM))[rng.integers(clusters, size=n)] + 0.35 * x
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_vs_plain(results: dict) -> None:
    x = unit_rows(N, 0)
    points = Points(np.arange(N, dtype=np.int64), x, np.arange(N, dtype=np.int64))
    step = block_rows(N)
    xt = torch.from_numpy(x)
    with timer(results, "plain_blocked_matmul_s"):
        for start in range(0, N, step):
            (xt[start : start + step] @ xt.T).max(dim=1)
    with timer(results, "exact_top1_s"):
        nearest(points, points, rows_per_block=step)
    results["exact_over_plain"] = round(results["exact_top1_s"] / results["plain_blocked_matmul_s"], 2)
    results["block_rows_50k"] = step


def memory_at_500k(results: dict) -> None:
    n = 500_000
    x = unit_rows(n, 1)
    points = Points(np.arange(n, dtype=np.int64), x, np.arange(n, dtype=np.int64))
    step = block_rows(n)
    queries = Points(points.ids[: 3 * step], x[: 3 * step], points.groups[: 3 * step])
    with timer(results, "500k_three_blocks_s"):
        nearest(queries, points, rows_per_block=step)
    results["500k_block_rows"] = step
    results["500k_vectors_mb"] = round(x.nbytes / 2**20)
    results["500k_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def synthetic_catalog(root: Path, n: int) -> tuple[Catalog, EmbedderRow, np.ndarray]:
    """A catalog of n distinct samples with synthetic unit vectors under one embedder."""
    path = root / "rows.jsonl"
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(
                json.dumps({"instruction": f"Synthetic task {i}", "input": "", "output": f"answer {i}"}) + "\n"
            )
    catalog = Catalog(root / "catalog")
    ingest_file(catalog, path, "synthetic")
    embedder = register_embedder(catalog, "synthetic", "-", DIM, "mean", "synthetic", None)
    with catalog.read() as conn:
        ids = np.array([r[0] for r in db.execute(conn, "SELECT sample_id FROM sample ORDER BY sample_id")])
    return catalog, embedder, ids


def job_full_vs_incremental(results: dict) -> None:
    new = N // 100
    with tempfile.TemporaryDirectory() as tmp:
        catalog, embedder, ids = synthetic_catalog(Path(tmp), N + new)
        np.random.default_rng(2).shuffle(ids)
        vectors = embedder.vectors(catalog)
        vectors.add(ids[:N], unit_rows(N, 3))
        with timer(results, "job_full_50k_s"):
            link_neighbours(catalog, embedder, method="exact")
        vectors.add(ids[N:], unit_rows(new, 4))
        with timer(results, "job_incremental_plus_1pct_s"):
            incremental = link_neighbours(catalog, embedder, method="exact")
        results["incremental_links_written"] = incremental.changed
        results["incremental_over_full"] = round(results["job_incremental_plus_1pct_s"] / results["job_full_50k_s"], 3)
        rebuilt = link_neighbours(catalog, embedder, rebuild=True, method="exact")
        results["rebuild_links_differing_from_incremental"] = rebuilt.changed


def ann_recall(results: dict, name: str, catalog: Catalog, embedder: EmbedderRow) -> None:
    """Exact links, then ANN links on the same vectors: recall@1 and the two times."""
    with timer(results, f"ann_{name}_exact_s"):
        link_neighbours(catalog, embedder, rebuild=True, method="exact")
    exact = _links(catalog)
    with timer(results, f"ann_{name}_s"):  # includes building the index
        link_neighbours(catalog, embedder, rebuild=True, method="ann")
    ann = _links(catalog)
    results[f"ann_{name}_rows"] = len(exact)
    results[f"ann_{name}_recall_at_1"] = round(sum(ann[s] == exact[s] for s in exact) / len(exact), 4)


def _links(catalog: Catalog) -> dict:
    with catalog.read() as conn:
        return dict(db.execute(conn, "SELECT sample_id, neighbour_id FROM neighbour_link"))


def ann_benchmarks(results: dict, real_catalog: Path | None) -> None:
    for name, clusters in (("random_20k", 0), ("clustered_20k", 500)):
        with tempfile.TemporaryDirectory() as tmp:
            catalog, embedder, ids = synthetic_catalog(Path(tmp), 20_000)
            embedder.vectors(catalog).add(ids, unit_rows(len(ids), 5, clusters))
            ann_recall(results, name, catalog, embedder)
    if real_catalog is not None:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(real_catalog, Path(tmp) / "catalog")
            catalog = Catalog(Path(tmp) / "catalog")
            ann_recall(results, "real_minilm", catalog, find_embedder(catalog))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-ann", action="store_true")
    parser.add_argument("--real-catalog", type=Path, help="a catalog with MiniLM vectors, e.g. demo-catalog")
    args = parser.parse_args()
    results: dict = {"rows": N, "dim": DIM, "torch_threads": torch.get_num_threads()}
    exact_vs_plain(results)
    job_full_vs_incremental(results)
    if not args.skip_ann:
        ann_benchmarks(results, args.real_catalog)
    memory_at_500k(results)
    save("neighbours_speed", results)


if __name__ == "__main__":
    main()
