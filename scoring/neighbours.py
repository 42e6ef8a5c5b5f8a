"""The neighbours step: each sample's one-shot example is its nearest other sample by cosine,
never one with the same user text, kept current as data grows.

Exact search: candidates come from blocked float32 matrix products: for each query row, every candidate
whose float32 similarity is within the float32 error bound of the row's best. The winner
among them is decided on float64 dot products, computed per pair in the same way wherever
the pair is met, with ties going to the smallest sample_id. A row's answer therefore does
not depend on block sizes or on which rows were computed together, which is what lets the
incremental update (new rows against all, old rows against the new) reproduce a full
recompute exactly.

Full mode computes every link. Incremental mode, when M samples are new among N linked ones,
computes the new rows against all N + M and the N old rows against the M new only, and
replaces an old link exactly when a new sample beats it. Both decide on the same float64
similarities (scoring.neighbours), so incremental links equal a full recompute.

Removal keeps this exact. The points are the current samples only, and removing a sample deletes
its link and every link to it (catalog.lifecycle). A remaining link still names the best among
the remaining samples (the best of a set is the best of any subset that holds it); a sample that
lost its link has a vector and no link, so incremental mode links it as a new one, against all.
The repair costs a pass over the affected samples, not over the catalog (bench/lifecycle_speed.py).

Scopes run the same search over other point sets. The catalog scope's points are every current
sample; a dataset scope's are that dataset's current members, and its links live beside the
catalog-wide ones (catalog.neighbours). A sample leaving a dataset loses that scope's links exactly
as a retired sample loses the catalog-wide ones, so growth and removal in one dataset touch only
that dataset's links (and the catalog-wide ones), and stay equal to a rebuild.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from catalog import Catalog, UserError, db
from catalog.choices import DEFAULT_SCOPE, EXACT_LIMIT, NEIGHBOUR_METHODS, SCOPES
from catalog.embed import EmbedderRow
from catalog.neighbours import (
    CATALOG_WIDE,
    NO_NEIGHBOUR,
    Links,
    current_groups,
    current_links,
    save_links,
    scope_datasets,
)
from catalog.score import check_pool
from catalog.vectors import VectorTable
from scoring.commits import patiently
from scoring.device import pick_device
from terminal.progress import Meter


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
    device: str = "cpu",
) -> Nearest:
    """Each query's nearest candidate not in its group.

    Args:
        queries: the rows to find neighbours for.
        candidates: the rows they may link to (may include the queries themselves).
        rows_per_block: query rows per matrix product (default: from available memory).
        on_block: called with the number of query rows finished after each block.
        floor: per query, a similarity its answer must reach to matter (say, its current link's);
            rows that provably cannot reach it come back as NO_NEIGHBOUR without exact rescoring.
        device: where the float32 products run (a GPU when present); the float64 decision runs on
            the CPU either way, so links do not depend on it.
    """
    n_queries, n_candidates = len(queries.ids), len(candidates.ids)
    out_ids = np.full(n_queries, NO_NEIGHBOUR, np.int64)
    out_sim = np.full(n_queries, np.nan, np.float64)
    if n_queries == 0 or n_candidates == 0:
        return Nearest(out_ids, out_sim)
    margin = near_tie_margin(candidates.vectors.shape[1])
    for start, stop, sims in similarity_blocks(queries, candidates, rows_per_block, device):
        top = sims.topk(min(2, n_candidates), dim=1)  # [B, 2]: best and runner-up
        if floor is not None:
            cannot_reach = torch.from_numpy(floor[start:stop] - margin).to(device) > top.values[:, 0].double()
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


def similarity_blocks(
    queries: Points, candidates: Points, rows_per_block: int | None = None, device: str = "cpu"
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, sims) per block of query rows: sims [stop - start, N] float32 similarities to every
    candidate, -inf where the candidate shares the query's group (itself, an exact duplicate)."""
    excluded = _GroupIndex(candidates.groups)
    cand = torch.from_numpy(np.ascontiguousarray(candidates.vectors, np.float32)).to(device)  # [N, d]
    step = rows_per_block or block_rows(len(candidates.ids), _free_bytes(device))
    for start in range(0, len(queries.ids), step):
        stop = min(start + step, len(queries.ids))
        query = torch.from_numpy(np.ascontiguousarray(queries.vectors[start:stop], np.float32)).to(device)  # [B, d]
        sims = query @ cand.T  # [B, N] float32
        rows, cols = excluded.pairs(queries.groups[start:stop])
        sims[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf
        yield start, stop, sims


def _free_bytes(device: str) -> int | None:
    """A GPU block's budget: an eighth of the device's free memory (None on the CPU: block_rows decides)."""
    if not device.startswith("cuda"):
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(min(1 << 30, free // 8))


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
    return torch.cat(rows).cpu().numpy(), torch.cat(cols).cpu().numpy()


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


ANN_CHUNK = 1024  # queries per LanceDB search call


@dataclass(frozen=True)
class LinkResult:
    """What a neighbour update did; with the dataset scope, totals over the datasets linked (a sample
    counts once per dataset it is in)."""

    embedder: str
    mode: str  # "full", "incremental" or "up-to-date" (datasets: "full" if any was, else "incremental" if any)
    method: str  # "exact" or "ann" (datasets: "ann" if any used it)
    samples: int
    new_samples: int
    changed: int
    without_neighbour: int
    seconds: float
    scope: str = DEFAULT_SCOPE
    datasets: int = 0  # dataset scopes linked (0 for the catalog scope)


def link_neighbours(
    catalog: Catalog,
    embedder: EmbedderRow,
    rebuild: bool = False,
    method: str = "auto",
    exact_limit: int = EXACT_LIMIT,
    device: str = "auto",
    scope: str = DEFAULT_SCOPE,
    dataset: str | None = None,
) -> LinkResult:
    """Bring `embedder`'s neighbour links in `scope` up to date with its vectors.

    Args:
        catalog: the catalog.
        embedder: whose vectors to link.
        rebuild: recompute every link (changes are still written only where a link differs).
        method: "exact" (blocked matrix products), "ann" (LanceDB IVF_HNSW_SQ + exact re-ranking),
            or "auto": exact up to `exact_limit` samples (of the scope).
        exact_limit: see `method`.
        device: where exact search runs ("auto": a GPU when present); the links are the same anywhere.
        scope: "catalog" (each sample's nearest other current sample) or "dataset" (its nearest other
            member of each dataset it is in: `dataset`'s members, or every dataset's).
        dataset: with the dataset scope, link this dataset only.
    """
    if method not in NEIGHBOUR_METHODS:
        raise UserError(f"unknown neighbour method {method!r}; use one of {', '.join(NEIGHBOUR_METHODS)}")
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    if dataset is not None and scope != "dataset":
        raise UserError("a dataset is linked on its own only with the dataset scope (--scope dataset)")
    started = time.monotonic()
    search = partial(nearest, device=pick_device(device))
    with catalog.job("neighbours"):
        if dataset is not None:
            check_pool(catalog, dataset)
        table = embedder.vectors(catalog)
        embedded = table.load()
        keys = [CATALOG_WIDE] if scope == "catalog" else scope_datasets(catalog, dataset)
        results = [
            _link_scope(catalog, embedder, table, embedded, key, rebuild, method, exact_limit, search) for key in keys
        ]
    return _total(embedder.name, scope, results, time.monotonic() - started)


@dataclass(frozen=True)
class _ScopeResult:
    mode: str
    ann: bool
    samples: int
    new_samples: int
    changed: int
    without_neighbour: int


def _link_scope(
    catalog: Catalog,
    embedder: EmbedderRow,
    table: VectorTable,
    embedded: tuple[np.ndarray, np.ndarray],
    scope_dataset: str,
    rebuild: bool,
    method: str,
    exact_limit: int,
    search,
) -> _ScopeResult:
    """One scope's links brought up to date: the whole catalog's ('') or one dataset's."""
    started_at = db.utcnow()
    points = current_points(catalog, embedded, scope_dataset)
    ids = points.ids
    stored = current_links(catalog, embedder.embedder_id, scope_dataset)
    known = np.isin(ids, stored.ids)
    use_ann = len(ids) > 0 and (method == "ann" or (method == "auto" and len(ids) > exact_limit))
    find = _ann_finder(table, points) if use_ann else search
    if rebuild or not known.any():
        mode, changed = "full", _full(find, points, stored)
    else:
        mode, changed = "incremental", _incremental(find, search, points, known, stored)
    if len(ids) == 0 or (mode == "incremental" and known.all()):
        mode = "up-to-date"
    else:
        patiently(  # the search may have run for long: a reader holding the catalog only delays this
            lambda: save_links(
                catalog,
                embedder.embedder_id,
                changed,
                scope_dataset=scope_dataset,
                method="ann" if use_ann else "exact",
                mode=mode,
                samples=len(ids),
                new_samples=int((~known).sum()),
                started_at=started_at,
            )
        )
    without = int(np.sum(current_links(catalog, embedder.embedder_id, scope_dataset).neighbour_ids == NO_NEIGHBOUR))
    return _ScopeResult(mode, use_ann, len(ids), int((~known).sum()), len(changed.ids), without)


def _total(embedder: str, scope: str, results: list[_ScopeResult], seconds: float) -> LinkResult:
    """One LinkResult for the scopes linked."""
    modes = {r.mode for r in results}
    mode = next((m for m in ("full", "incremental") if m in modes), "up-to-date")
    return LinkResult(
        embedder,
        mode,
        "ann" if any(r.ann for r in results) else "exact",
        sum(r.samples for r in results),
        sum(r.new_samples for r in results),
        sum(r.changed for r in results),
        sum(r.without_neighbour for r in results),
        seconds,
        scope,
        len(results) if scope == "dataset" else 0,
    )


def current_points(
    catalog: Catalog, embedded: tuple[np.ndarray, np.ndarray], scope_dataset: str = CATALOG_WIDE
) -> Points:
    """Of the embedder's vectors (`embedded`: ids, vectors, as VectorTable.load returns them), those
    of the current samples in the scope: those of retired samples (kept until a purge) and of purged
    ones (until the purge's LanceDB step is done), and with a dataset scope those of other datasets'
    samples, are neither queries nor candidates."""
    embedded_ids, vectors = embedded
    ids, groups = current_groups(catalog, embedded_ids, scope_dataset)
    if len(ids) < len(embedded_ids):
        vectors = vectors[np.searchsorted(embedded_ids, ids)]
    return Points(ids, vectors, groups)


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


def _incremental(find, search, points: Points, known: np.ndarray, stored: Links) -> Links:
    """Links of the new samples (against all), and of the old ones a new sample beats."""
    new, old = points.subset(~known), points.subset(known)
    found = _with_progress(find, new, points, "linking (new)")
    previous, _ = _lookup(stored, old.ids)
    challengers = _with_progress(
        search, old, new, "linking (old vs new)", floor=np.nan_to_num(previous.similarity, nan=-np.inf)
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
    """nearest() through the LanceDB ANN index: hits re-ranked on the exact float64 similarity.

    The index also holds vectors that are not candidates (retired samples' vectors stay until a
    purge): such hits are dropped like excluded duplicates, and rows whose hits are all dropped
    fall back to the exact search."""
    if not table.has_ann_index():
        table.build_ann_index()
    largest_group = int(np.unique(candidates_all.groups, return_counts=True)[1].max())
    others = len(table.ids()) - len(candidates_all.ids)  # vectors of samples that are not current
    k = min(len(candidates_all.ids) + others, 10 + largest_group + min(others, 10))

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
