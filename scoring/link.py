"""The neighbours step: each embedded sample's one-shot example, kept current as data grows.

Full mode computes every link. Incremental mode, when M samples are new among N linked ones,
computes the new rows against all N + M and the N old rows against the M new only, and
replaces an old link exactly when a new sample beats it. Both decide on the same float64
similarities (scoring.knn), so incremental links equal a full recompute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from catalog import Catalog, UserError, db
from catalog.embeddings import EmbedderRow
from catalog.neighbours import NO_NEIGHBOUR, Links, current_links, save_links, text_groups
from catalog.progress import Meter
from catalog.vectors import VectorTable
from scoring.knn import Nearest, Points, beats, choose, nearest, pair_similarity

EXACT_LIMIT = 1_000_000  # samples; above it, "auto" uses the LanceDB ANN index (exact is faster below, on CPU)
METHODS = ("auto", "exact", "ann")
ANN_CHUNK = 1024  # queries per LanceDB search call


@dataclass(frozen=True)
class LinkResult:
    embedder: str
    mode: str  # "full", "incremental" or "up-to-date"
    method: str  # "exact" or "ann"
    samples: int
    new_samples: int
    changed: int
    without_neighbour: int
    seconds: float


def link_neighbours(
    catalog: Catalog, embedder: EmbedderRow, rebuild: bool = False, method: str = "auto", exact_limit: int = EXACT_LIMIT
) -> LinkResult:
    """Bring `embedder`'s neighbour links up to date with its vectors.

    Args:
        catalog: the catalog.
        embedder: whose vectors to link.
        rebuild: recompute every link (changes are still written only where a link differs).
        method: "exact" (blocked matrix products), "ann" (LanceDB IVF_HNSW_SQ + exact re-ranking),
            or "auto": exact up to `exact_limit` samples.
        exact_limit: see `method`.
    """
    if method not in METHODS:
        raise UserError(f"unknown neighbour method {method!r}; use one of {', '.join(METHODS)}")
    started, started_at = time.monotonic(), db.utcnow()
    with catalog.job("neighbours"):
        table = embedder.vectors(catalog)
        ids, vectors = table.load()
        points = Points(ids, vectors, text_groups(catalog, ids))
        stored = current_links(catalog, embedder.embedder_id)
        known = np.isin(ids, stored.ids)
        use_ann = len(ids) > 0 and (method == "ann" or (method == "auto" and len(ids) > exact_limit))
        find = _ann_finder(table, points) if use_ann else nearest
        if rebuild or not known.any():
            mode, changed = "full", _full(find, points, stored)
        else:
            mode, changed = "incremental", _incremental(find, points, known, stored)
        if len(ids) == 0 or (mode == "incremental" and known.all()):
            mode = "up-to-date"
        else:
            save_links(
                catalog,
                embedder.embedder_id,
                changed,
                method="ann" if use_ann else "exact",
                mode=mode,
                samples=len(ids),
                new_samples=int((~known).sum()),
                started_at=started_at,
            )
        without = int(np.sum(current_links(catalog, embedder.embedder_id).neighbour_ids == NO_NEIGHBOUR))
    return LinkResult(
        embedder.name,
        mode,
        "ann" if use_ann else "exact",
        len(ids),
        int((~known).sum()),
        len(changed.ids),
        without,
        time.monotonic() - started,
    )


def _full(find, points: Points, stored: Links) -> Links:
    """Every sample's link, computed afresh; returned are those that are new or differ from the stored one."""
    found = _with_progress(find, points, points, "linking (all)")
    previous, has_link = _lookup(stored, points.ids)
    same = (
        has_link
        & (previous.neighbour_ids == found.ids)
        & ((previous.similarity == found.similarity) | (found.ids == NO_NEIGHBOUR))
    )
    return Links(points.ids[~same], found.ids[~same], found.similarity[~same])


def _incremental(find, points: Points, known: np.ndarray, stored: Links) -> Links:
    """Links of the new samples (against all), and of the old ones a new sample beats."""
    new, old = points.subset(~known), points.subset(known)
    found = _with_progress(find, new, points, "linking (new)")
    previous, _ = _lookup(stored, old.ids)
    challengers = _with_progress(
        nearest, old, new, "linking (old vs new)", floor=np.nan_to_num(previous.similarity, nan=-np.inf)
    )
    replace = beats(challengers.similarity, challengers.ids, previous.similarity, previous.neighbour_ids)
    return Links(
        np.concatenate([new.ids, old.ids[replace]]),
        np.concatenate([found.ids, challengers.ids[replace]]),
        np.concatenate([found.similarity, challengers.similarity[replace]]),
    )


def _with_progress(find, queries: Points, candidates: Points, description: str, **options) -> Nearest:
    with Meter(description, len(queries.ids), "rows", enabled=len(queries.ids) * len(candidates.ids) > 10**8) as meter:
        return find(queries, candidates, on_block=meter.advance, **options)


def _lookup(stored: Links, ids: np.ndarray) -> tuple[Links, np.ndarray]:
    """The stored links of sorted `ids` (NO_NEIGHBOUR/NaN where none is stored), and where one is."""
    neighbour_ids = np.full(len(ids), NO_NEIGHBOUR, np.int64)
    similarity = np.full(len(ids), np.nan)
    found = np.zeros(len(ids), bool)
    if len(stored.ids):
        position = np.searchsorted(stored.ids, ids).clip(max=len(stored.ids) - 1)
        found = stored.ids[position] == ids
        neighbour_ids[found], similarity[found] = (
            stored.neighbour_ids[position[found]],
            stored.similarity[position[found]],
        )
    return Links(ids, neighbour_ids, similarity), found


def _ann_finder(table: VectorTable, candidates_all: Points):
    """nearest() through the LanceDB ANN index: hits re-ranked on the exact float64 similarity;
    rows whose hits are all excluded duplicates fall back to the exact search."""
    if not table.has_ann_index():
        table.build_ann_index()
    largest_group = int(np.unique(candidates_all.groups, return_counts=True)[1].max())
    k = min(len(candidates_all.ids), 10 + largest_group)

    def find(queries: Points, candidates: Points, on_block=None) -> Nearest:
        out_ids = np.full(len(queries.ids), NO_NEIGHBOUR, np.int64)
        out_sim = np.full(len(queries.ids), np.nan)
        for start in range(0, len(queries.ids), ANN_CHUNK):
            chunk = slice(start, start + ANN_CHUNK)
            rows, hit_ids = table.search(queries.vectors[chunk], k)
            cols = np.searchsorted(candidates.ids, hit_ids).clip(max=len(candidates.ids) - 1)
            keep = (candidates.ids[cols] == hit_ids) & (candidates.groups[cols] != queries.groups[chunk][rows])
            rows, cols = rows[keep], cols[keep]
            rows, ids, sims = choose(
                rows, candidates.ids[cols], pair_similarity(queries.vectors[chunk][rows], candidates.vectors[cols])
            )
            out_ids[start + rows], out_sim[start + rows] = ids, sims
            if on_block is not None:
                on_block(len(queries.ids[chunk]))
        missing = out_ids == NO_NEIGHBOUR
        if missing.any():
            fallback = nearest(queries.subset(missing), candidates)
            out_ids[missing], out_sim[missing] = fallback.ids, fallback.similarity
        return Nearest(out_ids, out_sim)

    return find
