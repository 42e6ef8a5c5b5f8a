"""Each sample's K nearest examples, for MIWV with more than one example (`score --examples K`).

The same exact rule as the one-example links (scoring.neighbours.nearest): float32 blocked products
only shortlist, a float64 similarity computed identically for every pair decides, ties go to the
smaller sample_id, and no example shares the sample's user text. The shortlist of a row is every
candidate within the float32 error bound of its k-th best float32 similarity: a true top-k member
missing from the float32 top k must beat one that is in it, so it sits within that bound. Rank 1 is
therefore exactly `nearest`'s answer, and no answer depends on block sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from catalog.errors import ArgumentError
from catalog.neighbours import NO_NEIGHBOUR
from scoring.neighbours import Points, near_tie_margin, pair_similarity, similarity_blocks


def nearest_examples(
    queries: Points,
    candidates: Points,
    k: int,
    rows_per_block: int | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's `k` nearest candidates not in its group, nearest first.

    Args:
        queries: the rows to find examples for.
        candidates: the rows they may take examples from (may include the queries themselves).
        k: examples per query.
        rows_per_block: query rows per matrix product (default: from available memory).
        device: where the float32 products run; the float64 decision runs on the CPU either way.

    Returns:
        (ids int64 [q, k], similarity float64 [q, k]): NO_NEIGHBOUR and NaN pad a row that has fewer
        than `k` candidates outside its group.
    """
    if not (isinstance(k, int) and k >= 1):
        raise ArgumentError("{0} must be a whole number of at least 1", "examples", detail=f"got {k!r}")
    n_queries, n_candidates = len(queries.ids), len(candidates.ids)
    out_ids = np.full((n_queries, k), NO_NEIGHBOUR, np.int64)
    out_sim = np.full((n_queries, k), np.nan, np.float64)
    if n_queries == 0 or n_candidates == 0:
        return out_ids, out_sim
    margin = near_tie_margin(candidates.vectors.shape[1])
    for start, _, sims in similarity_blocks(queries, candidates, rows_per_block, device):
        pair_rows, pair_cols = _shortlist(sims, k, margin)
        if len(pair_rows) == 0:
            continue
        exact = pair_similarity(queries.vectors[start + pair_rows], candidates.vectors[pair_cols])
        rows, ranks, ids, similarity = _top_k(pair_rows, candidates.ids[pair_cols], exact, k)
        out_ids[start + rows, ranks], out_sim[start + rows, ranks] = ids, similarity
    return out_ids, out_sim


def _shortlist(sims: torch.Tensor, k: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every allowed candidate within `margin` of its row's k-th best float32 similarity
    (every allowed candidate, for a row with fewer than k)."""
    kth = sims.topk(min(k, sims.shape[1]), dim=1).values[:, -1]  # -inf where a row has fewer than k
    keep = torch.isfinite(sims) & (sims >= (kth - margin)[:, None])
    rows, cols = keep.nonzero(as_tuple=True)
    return rows.cpu().numpy(), cols.cpu().numpy()


def _top_k(
    rows: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row among its shortlisted pairs: the `k` best by float64 similarity, ties to the smaller id.

    Returns (row, rank - 1, id, similarity) for each pair kept."""
    order = np.lexsort((ids, -sims, rows))
    rows, ids, sims = rows[order], ids[order], sims[order]
    starts = np.r_[True, rows[1:] != rows[:-1]]
    rank = np.arange(len(rows)) - np.maximum.accumulate(np.where(starts, np.arange(len(rows)), 0))
    kept = rank < k
    return rows[kept], rank[kept], ids[kept], sims[kept]
