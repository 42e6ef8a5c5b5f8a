"""Exact top-1 search against a float64 brute force: exclusions, ties, block invariance, incremental."""

from __future__ import annotations

import numpy as np
import pytest

from catalog.vectors import VectorTable
from scoring import neighbours
from scoring.neighbours import NO_NEIGHBOUR, Points, _ann_finder, beats, nearest, pair_similarity


def unit_rows(n: int, d: int = 48, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(points: Points) -> np.ndarray:
    sims = points.vectors.astype(np.float64) @ points.vectors.astype(np.float64).T
    sims[points.groups[:, None] == points.groups[None, :]] = -np.inf
    best = sims.max(axis=1)
    out = np.full(len(points.ids), NO_NEIGHBOUR)
    for i in np.flatnonzero(np.isfinite(best)):
        out[i] = points.ids[np.flatnonzero(sims[i] == best[i])].min()  # ties: smallest id
    return out


@pytest.fixture
def points() -> Points:
    x = unit_rows(600)
    x[10] = x[20] = x[30]  # identical vectors under different user texts: a tie, smallest id wins
    groups = np.arange(600, dtype=np.int64)
    groups[[5, 6, 7]] = 10_000  # three samples with the same user text
    x[6] = x[5]  # ...and the same vector, as real duplicates have
    return Points(np.arange(600, dtype=np.int64) * 11 - 3000, x, groups)


def test_matches_float64_brute_force_with_exclusions_and_ties(points):
    found = nearest(points, points, rows_per_block=64)
    assert np.array_equal(found.ids, brute_force(points))
    assert found.ids[5] not in (points.ids[6], points.ids[7]) and found.ids[5] != points.ids[5]
    assert found.ids[20] == points.ids[10] and found.ids[10] == points.ids[20]  # tie between 20 and 30
    expected = pair_similarity(points.vectors, points.vectors[np.searchsorted(points.ids, found.ids)])
    assert np.array_equal(found.similarity, expected)


def test_result_bits_do_not_depend_on_block_size(points):
    runs = [nearest(points, points, rows_per_block=b) for b in (1, 7, 64, 600)]
    for run in runs[1:]:
        assert np.array_equal(run.ids, runs[0].ids) and np.array_equal(run.similarity, runs[0].similarity)


def test_pair_similarity_is_the_same_alone_or_in_a_batch(points):
    alone = [pair_similarity(points.vectors[i : i + 1], points.vectors[j : j + 1])[0] for i, j in [(3, 9), (100, 2)]]
    batch = pair_similarity(points.vectors[[3, 100, 50]], points.vectors[[9, 2, 51]])
    assert alone == list(batch[:2])


def test_a_sample_alone_or_among_its_duplicates_has_no_neighbour():
    x = unit_rows(3)
    alone = Points(np.array([7]), x[:1], np.array([1]))
    assert nearest(alone, alone).ids.tolist() == [NO_NEIGHBOUR]
    duplicates = Points(np.array([1, 2, 3]), x, np.array([4, 4, 4]))
    found = nearest(duplicates, duplicates)
    assert found.ids.tolist() == [NO_NEIGHBOUR] * 3 and np.isnan(found.similarity).all()


@pytest.mark.parametrize("use_floor", [False, True])
def test_incremental_update_equals_full_recompute(points, use_floor):
    """New rows against all, old rows against the new, merged by `beats`: the full answer.

    With a floor (the stored similarity), old rows that cannot improve skip the exact rescoring.
    """
    is_new = np.random.default_rng(1).random(len(points.ids)) < 0.3
    old, new = points.subset(~is_new), points.subset(is_new)
    stored = nearest(old, old)
    found_new = nearest(new, points, rows_per_block=50)
    challengers = nearest(old, new, rows_per_block=33, floor=stored.similarity if use_floor else None)
    replace = beats(challengers.similarity, challengers.ids, stored.similarity, stored.ids)
    merged = np.where(replace, challengers.ids, stored.ids)
    full = nearest(points, points)
    assert np.array_equal(merged, full.ids[~is_new]) and np.array_equal(found_new.ids, full.ids[is_new])
    assert replace.any() and not replace.all()
    if use_floor:
        assert (challengers.ids == NO_NEIGHBOUR).sum() > len(old.ids) / 2  # most rows were skipped


def test_ids_spanning_the_whole_int64_range_are_accepted():
    """Sample ids are 64-bit hashes: a difference of two of them overflows int64."""
    ids = np.array([-(2**63) + 5, -5196945151694835605, 6840304417513588173, 2**63 - 1], dtype=np.int64)
    points = Points(ids, unit_rows(4), np.arange(4, dtype=np.int64))
    assert set(nearest(points, points).ids) <= set(ids)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Points, VectorTable]:
    """Clustered unit vectors, well enough separated for the ANN index to find the exact answer."""
    n = 600
    x = unit_rows(40, d=32, seed=2)[np.arange(n) % 40] + 0.3 * unit_rows(n, d=32, seed=3)
    points = Points(np.arange(n, dtype=np.int64) * 7, x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(n))
    table = VectorTable(tmp_path_factory.mktemp("vectors"), 1, 32)
    table.add(points.ids, points.vectors)
    table.build_ann_index()
    return points, table


@pytest.mark.parametrize(("queries", "chunk"), [(1, 1024), (2, 1024), (40, 1024), (33, 16)])
def test_the_ann_search_finds_the_exact_neighbours_for_any_number_of_queries(indexed, queries, chunk, monkeypatch):
    """A single query vector (one new sample, or a last chunk of one: 33 = 16 + 16 + 1) comes back
    from LanceDB without a query index; every count gives the exact answer."""
    monkeypatch.setattr(neighbours, "ANN_CHUNK", chunk)
    points, table = indexed
    asked = points.subset(np.arange(len(points.ids)) >= len(points.ids) - queries)
    found = _ann_finder(table, points)(asked, points)
    exact = nearest(asked, points)
    assert np.array_equal(found.ids, exact.ids) and np.array_equal(found.similarity, exact.similarity)
