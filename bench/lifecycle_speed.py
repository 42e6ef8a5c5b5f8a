"""Incremental repair of neighbour links after a removal, against a rebuild, all figures from one run.

A catalog of 50k samples with clustered synthetic unit vectors (500 clusters, written directly
to LanceDB as bench/neighbours_speed.py does) is linked in full; then 1% of its samples are removed
(`lifecycle.remove(ids=...)`: they retire, and the samples linked to them lose their link). The
repair is the next `link_neighbours`, which links only those samples anew; it is timed against
`link_neighbours(rebuild=True)`, which recomputes every link and must find nothing to change (the
repair's links are the rebuild's). Also timed: a run with nothing to do (loading the vectors,
duplicate groups and links: the floor under any run).

Run: .venv/bin/python bench/lifecycle_speed.py [--rows 50000] [--removed-percent 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save, timer  # noqa: E402
from bench.neighbours_speed import synthetic_catalog, unit_rows  # noqa: E402
from catalog import Catalog, db, lifecycle  # noqa: E402
from scoring.neighbours import link_neighbours  # noqa: E402

CLUSTERS = 500


def links(catalog: Catalog) -> dict:
    with catalog.read() as conn:
        rows = db.execute(conn, "SELECT sample_id, neighbour_id, similarity FROM neighbour_link")
    return {sample: (neighbour, similarity) for sample, neighbour, similarity in rows}


def repair_vs_rebuild(results: dict, rows: int, removed_percent: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        catalog, embedder, ids = synthetic_catalog(Path(tmp), rows)
        embedder.vectors(catalog).add(ids, unit_rows(rows, 3, clusters=CLUSTERS))
        with timer(results, "full_link_s"):
            link_neighbours(catalog, embedder, method="exact")
        with timer(results, "nothing_to_do_s"):
            assert link_neighbours(catalog, embedder, method="exact").mode == "up-to-date"
        removed = np.random.default_rng(4).choice(ids, int(rows * removed_percent / 100), replace=False)
        takedown = Path(tmp) / "takedown.txt"
        takedown.write_text("".join(f"{i}\n" for i in removed))
        with timer(results, "remove_s"):
            removal = lifecycle.remove(catalog, ids=takedown)
        results["samples_removed"] = removal.samples_retired
        results["links_to_repair"] = removal.links_to_repair
        with timer(results, "repair_s"):
            repair = link_neighbours(catalog, embedder, method="exact")
        assert repair.mode == "incremental" and repair.new_samples == removal.links_to_repair
        results["repair_links_written"] = repair.changed
        repaired = links(catalog)
        with timer(results, "rebuild_s"):
            rebuild = link_neighbours(catalog, embedder, rebuild=True, method="exact")
        results["rebuild_links_differing_from_repair"] = rebuild.changed
        assert rebuild.changed == 0 and links(catalog) == repaired, "the repair must give the rebuild's links"
        assert len(repaired) == rows - len(removed)
        results["repair_over_rebuild"] = round(results["repair_s"] / results["rebuild_s"], 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--removed-percent", type=float, default=1.0)
    args = parser.parse_args()
    results: dict = {
        "rows": args.rows,
        "dim": 384,
        "clusters": CLUSTERS,
        "removed_percent": args.removed_percent,
        "torch_threads": torch.get_num_threads(),
    }
    repair_vs_rebuild(results, args.rows, args.removed_percent)
    save("lifecycle_speed", results)


if __name__ == "__main__":
    main()
