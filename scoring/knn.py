"""Exact nearest neighbour (top-1 by cosine) of each sample, never one with the same user text.

Candidates come from blocked float32 matrix products: for each query row, every candidate
whose float32 similarity is within the float32 error bound of the row's best. The winner
among them is decided on float64 dot products, computed per pair in the same way wherever
the pair is met, with ties going to the smallest sample_id. A row's answer therefore does
not depend on block sizes or on which rows were computed together, which is what lets the
incremental update (new rows against all, old rows against the new) reproduce a full
recompute exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

NO_NEIGHBOUR = -1


@dataclass(frozen=True)
class Points:
    """Samples with their unit vectors, sorted by sample_id.

    groups: one value per distinct user text; samples of a group are never each other's neighbour
    (that also excludes a sample from being its own neighbour).
    """

    ids: np.ndarray  # int64 [n], ascending
    vectors: np.ndarray  # float32 [n, d]
    groups: np.ndarray  # int64 [n]

    def __post_init__(self) -> None:
        assert len(self.ids) == len(self.vectors) == len(self.groups)
        assert np.all(self.ids[1:] > self.ids[:-1]), "ids must be sorted and unique"

    def subset(self, mask: np.ndarray) -> Points:
        return Points(self.ids[mask], self.vectors[mask], self.groups[mask])


@dataclass(frozen=True)
class Nearest:
    """For each query: its neighbour's sample_id (NO_NEIGHBOUR if none) and float64 cosine (NaN if none)."""

    ids: np.ndarray  # int64 [q]
    similarity: np.ndarray  # float64 [q]


def pair_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 dot product of each row pair (a[i], b[i]); the same bits for a pair wherever it is computed."""
    return np.multiply(a.astype(np.float64), b.astype(np.float64)).sum(axis=1)


def near_tie_margin(dimension: int) -> float:
    """An upper bound on how far two float32 dot products of unit vectors can be misordered."""
    return 2.0 * dimension * 2.0**-24 + 1e-7


def block_rows(n_candidates: int, budget_bytes: int | None = None) -> int:
    """Query rows per block so a block's float32 similarities (and a mask) stay within budget."""
    if budget_bytes is None:
        import psutil

        budget_bytes = int(min(1 << 30, max(128 << 20, psutil.virtual_memory().available // 8)))
    return int(max(1, min(8192, budget_bytes // (max(1, n_candidates) * 5))))


def nearest(
    queries: Points,
    candidates: Points,
    rows_per_block: int | None = None,
    on_block: Callable[[int], None] | None = None,
    floor: np.ndarray | None = None,
) -> Nearest:
    """Each query's nearest candidate not in its group.

    Args:
        queries: the rows to find neighbours for.
        candidates: the rows they may link to (may include the queries themselves).
        rows_per_block: query rows per matrix product (default: from available memory).
        on_block: called with the number of query rows finished after each block.
        floor: per query, a similarity its answer must reach to matter (say, its current link's);
            rows that provably cannot reach it come back as NO_NEIGHBOUR without exact rescoring.
    """
    n_queries, n_candidates = len(queries.ids), len(candidates.ids)
    out_ids = np.full(n_queries, NO_NEIGHBOUR, np.int64)
    out_sim = np.full(n_queries, np.nan, np.float64)
    if n_queries == 0 or n_candidates == 0:
        return Nearest(out_ids, out_sim)
    margin = near_tie_margin(candidates.vectors.shape[1])
    excluded = _GroupIndex(candidates.groups)
    cand = torch.from_numpy(np.ascontiguousarray(candidates.vectors, np.float32))  # [N, d]
    step = rows_per_block or block_rows(n_candidates)
    for start in range(0, n_queries, step):
        stop = min(start + step, n_queries)
        query = torch.from_numpy(np.ascontiguousarray(queries.vectors[start:stop], np.float32))  # [B, d]
        sims = query @ cand.T  # [B, N] float32
        rows, cols = excluded.pairs(queries.groups[start:stop])
        sims[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        top = sims.topk(min(2, n_candidates), dim=1)  # [B, 2]: best and runner-up
        if floor is not None:
            cannot_reach = torch.from_numpy(floor[start:stop] - margin) > top.values[:, 0].double()
            top.values[cannot_reach, 0] = -torch.inf
        pair_rows, pair_cols = _near_ties(sims, top, margin)
        if on_block is not None:
            on_block(stop - start)
        if len(pair_rows) == 0:
            continue
        rows, ids, sims = choose(
            pair_rows,
            candidates.ids[pair_cols],
            pair_similarity(queries.vectors[start + pair_rows], candidates.vectors[pair_cols]),
        )
        out_ids[start + rows], out_sim[start + rows] = ids, sims
    return Nearest(out_ids, out_sim)


def choose(rows: np.ndarray, ids: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query row among its candidate pairs: the highest similarity, ties to the smallest id.

    Returns (row, id, similarity) once for every row that has candidates.
    """
    if len(rows) == 0:
        return rows, ids, sims
    order = np.lexsort((ids, -sims, rows))
    first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
    return rows[first], ids[first], sims[first]


def _near_ties(sims: torch.Tensor, top, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every candidate within `margin` of its row's float32 best.

    Usually that is the argmax alone; rows whose runner-up is that close get a full scan.
    Rows with no candidate at all (everything excluded) yield nothing.
    """
    best = top.values[:, 0]
    has_any = torch.isfinite(best)
    tied = has_any & (top.values[:, -1] >= best - margin) if top.values.shape[1] > 1 else torch.zeros_like(has_any)
    single = (has_any & ~tied).nonzero(as_tuple=True)[0]
    rows, cols = [single], [top.indices[single, 0]]
    tied_rows = tied.nonzero(as_tuple=True)[0]
    if len(tied_rows):
        r, c = (sims[tied_rows] >= (best[tied_rows] - margin)[:, None]).nonzero(as_tuple=True)
        rows.append(tied_rows[r])
        cols.append(c)
    return torch.cat(rows).numpy(), torch.cat(cols).numpy()


def beats(sim_a: np.ndarray, id_a: np.ndarray, sim_b: np.ndarray, id_b: np.ndarray) -> np.ndarray:
    """Where link a is the better neighbour than link b: higher similarity, then smaller id; none loses."""
    a_has, b_has = id_a != NO_NEIGHBOUR, id_b != NO_NEIGHBOUR
    higher = np.where(a_has & b_has, (sim_a > sim_b) | ((sim_a == sim_b) & (id_a < id_b)), False)
    return (a_has & ~b_has) | higher


class _GroupIndex:
    """Finds, for query groups, every candidate column in the same group."""

    def __init__(self, groups: np.ndarray) -> None:
        self.order = np.argsort(groups, kind="stable")
        self.sorted = groups[self.order]

    def pairs(self, query_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, candidate column) for every candidate sharing the query row's group."""
        lo = np.searchsorted(self.sorted, query_groups, "left")
        counts = np.searchsorted(self.sorted, query_groups, "right") - lo
        total = int(counts.sum())
        rows = np.repeat(np.arange(len(query_groups)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows, self.order[np.repeat(lo, counts) + offsets]
