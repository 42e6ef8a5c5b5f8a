"""Neighbour scopes on real data: per-dataset links equal a from-scratch computation over each
dataset's members (two datasets sharing samples), stay exact through growth and removal of one
dataset, sit beside the catalog-wide links in SQL, and a one-shot pass both scopes need runs once."""

from __future__ import annotations

import numpy as np
import pytest

import miwv
from catalog import db
from tests.conftest import write_jsonl
from tests.test_lifecycle_neighbours import shared_rows

pytestmark = pytest.mark.slow  # the real MiniLM (and SmolLM2 for the one-shot test)


def brute_force_links(catalog: miwv.Catalog, dataset: str | None) -> dict[int, tuple[int, float]]:
    """Each current member's nearest other member (of `dataset`, or of any dataset) with a different
    user text, by float64 cosine over the stored vectors, ties to the smaller id: the definition."""
    from catalog.embed import find_embedder

    store = catalog._store
    ids, vectors = find_embedder(store).vectors(store).load()
    with store.read() as conn:
        members = db.execute(
            conn,
            """SELECT DISTINCT m.sample_id, hash(s.user_text) FROM membership m JOIN sample s USING (sample_id)
               WHERE $d IS NULL OR m.dataset = $d ORDER BY 1""",
            {"d": dataset},
        )
    member_ids = np.array([m[0] for m in members])
    groups = np.array([m[1] for m in members])
    points = vectors[np.searchsorted(ids, member_ids)].astype(np.float64)
    sims = points @ points.T
    sims[groups[:, None] == groups[None, :]] = -np.inf
    links = {}
    for row, sample_id in enumerate(member_ids):
        best = sims[row].max()
        if np.isfinite(best):
            winner = member_ids[sims[row] == best].min()
            links[int(sample_id)] = (int(winner), float(best))
    return links


def stored_links(catalog: miwv.Catalog, scope: str, dataset: str | None = None) -> dict[int, tuple[int, float]]:
    rows = catalog.sql(
        "SELECT sample_id, neighbour_id, similarity, scope_dataset FROM neighbours ORDER BY sample_id"
    ).to_pylist()
    return {
        r["sample_id"]: (r["neighbour_id"], r["similarity"])
        for r in rows
        if (scope == "catalog" and r["scope_dataset"] is None) or (scope == "dataset" and r["scope_dataset"] == dataset)
    }


def assert_exact(catalog: miwv.Catalog, datasets: list[str]) -> None:
    """Stored links of every scope equal the brute-force definition (similarities to float rounding)."""
    for scope, dataset in [("catalog", None)] + [("dataset", d) for d in datasets]:
        stored, expected = stored_links(catalog, scope, dataset), brute_force_links(catalog, dataset)
        assert stored.keys() == expected.keys(), (scope, dataset)
        assert {s: n for s, (n, _) in stored.items()} == {s: n for s, (n, _) in expected.items()}, (scope, dataset)
        for sample_id, (_, similarity) in stored.items():
            assert similarity == pytest.approx(expected[sample_id][1], abs=1e-6)


@pytest.fixture
def two_datasets(tmp_path):
    """'code' (40 Code Alpaca rows) and 'mix' (the last 20 of them and 20 Dolly rows), embedded and
    linked catalog-wide and within each dataset."""
    code, dolly = shared_rows("code_alpaca_2k.jsonl", 60), shared_rows("dolly_3k_alpagasus.jsonl", 40)
    catalog = miwv.open(tmp_path / "cat")
    catalog.ingest(write_jsonl(tmp_path / "code.jsonl", code[:40]), dataset="code")
    catalog.ingest(write_jsonl(tmp_path / "mix.jsonl", code[20:40] + dolly[:20]), dataset="mix")
    catalog.embed()
    linked = catalog.neighbours(scope="dataset")
    return catalog, code, dolly, linked


def test_dataset_links_equal_the_definition_within_each_dataset(two_datasets):
    catalog, _, _, linked = two_datasets
    assert (linked.scope, linked.datasets, linked.samples, linked.mode) == ("dataset", 2, 80, "full")
    assert_exact(catalog, ["code", "mix"])
    shared = catalog.sql(
        "SELECT sample_id FROM samples WHERE len(datasets) = 2 ORDER BY sample_id"
    ).column(0).to_pylist()  # fmt: skip
    assert len(shared) == 20
    per_sample = catalog.sql(
        "SELECT sample_id, count(*) AS links FROM neighbours WHERE scope = 'dataset' GROUP BY 1"
    ).to_pylist()
    assert {r["sample_id"]: r["links"] for r in per_sample if r["sample_id"] in shared} == dict.fromkeys(shared, 2)
    again = catalog.neighbours(scope="dataset")
    assert (again.mode, again.changed) == ("up-to-date", 0)


def test_growth_of_one_dataset_touches_only_its_links_and_stays_exact(two_datasets, tmp_path):
    catalog, code, dolly, _ = two_datasets
    before = stored_links(catalog, "dataset", "code")
    catalog.ingest(write_jsonl(tmp_path / "more.jsonl", dolly[20:40] + code[40:50]), dataset="mix")
    catalog.embed()  # vectors for the 30 new samples, catalog-wide links
    grown = catalog.neighbours(scope="dataset")
    assert (grown.mode, grown.new_samples) == ("incremental", 30)
    runs = catalog.sql(
        "SELECT scope_dataset, count(*) AS n FROM neighbour_run WHERE run_id > 3 GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    assert runs == [{"scope_dataset": "", "n": 1}, {"scope_dataset": "mix", "n": 1}]  # code's links: no run
    assert stored_links(catalog, "dataset", "code") == before
    assert_exact(catalog, ["code", "mix"])
    rebuilt = catalog.neighbours(scope="dataset", rebuild=True)
    assert rebuilt.changed == 0


def test_leaving_one_dataset_drops_only_that_scopes_links_and_repairs_exactly(two_datasets):
    catalog, code, _, _ = two_datasets
    code_links = stored_links(catalog, "dataset", "code")
    instruction = code[25]["instruction"].replace("'", "''")
    removed = catalog.remove(dataset="mix", where=f"instruction = '{instruction}'")
    assert (removed.memberships_out, removed.samples_retired) == (1, 0)  # still in 'code'
    assert removed.links_to_repair >= 1  # the mix members whose example it was
    assert stored_links(catalog, "dataset", "code") == code_links
    assert len(stored_links(catalog, "dataset", "mix")) < 39  # its link, and links to it, left with it
    repaired = catalog.neighbours(scope="dataset")
    assert repaired.mode == "incremental"
    assert_exact(catalog, ["code", "mix"])
    assert catalog.neighbours(scope="dataset", rebuild=True).changed == 0


def test_scope_errors_are_one_clear_line(two_datasets, tmp_path):
    catalog, _, _, _ = two_datasets
    with pytest.raises(miwv.UserError, match="--scope dataset"):
        catalog.neighbours(dataset="code")
    with pytest.raises(miwv.UserError, match="nope"):
        catalog.neighbours(scope="dataset", dataset="nope")
    with pytest.raises(miwv.UserError, match="--dataset"):
        catalog.score("smollm2-135m", scope="dataset")
    with pytest.raises(miwv.ArgumentError, match="scope"):
        catalog.neighbours(scope="everywhere")


def test_both_scopes_side_by_side_and_a_shared_example_is_scored_once(two_datasets):
    """Scoring 'code' with catalog-wide and with per-dataset examples: where both scopes give a sample
    the same example, the second run reuses the one-shot loss; miwv_scores holds both scopes."""
    catalog, _, _, _ = two_datasets
    first = catalog.score("smollm2-135m", template="alpaca", dataset="code", limit=10)
    second = catalog.score("smollm2-135m", template="alpaca", dataset="code", limit=10, scope="dataset")
    pool = catalog.sql(
        """SELECT c.sample_id, c.neighbour_id AS catalog_example, d.neighbour_id AS dataset_example
           FROM neighbours c JOIN neighbours d ON d.sample_id = c.sample_id AND d.scope_dataset = 'code'
           WHERE c.scope = 'catalog' AND c.sample_id IN (
               SELECT sample_id FROM membership WHERE dataset = 'code' ORDER BY sample_id LIMIT 10)"""
    ).to_pylist()
    differing = sum(r["catalog_example"] != r["dataset_example"] for r in pool)
    assert first.one_shot_passes >= 10 and second.zero_shot_passes <= differing
    assert second.one_shot_passes == differing
    side_by_side = catalog.sql(
        """SELECT scope, count(*) AS n FROM miwv_scores
           WHERE status = 'ok' AND coalesce(scope_dataset, 'code') = 'code' GROUP BY scope ORDER BY scope"""
    ).to_pylist()  # (a pool sample also in 'mix' whose example there was already scored has a score there too)
    assert side_by_side == [{"scope": "catalog", "n": 10}, {"scope": "dataset", "n": 10}]
    ranked = catalog.select("smollm2-135m", top_k=3, dataset="code", scope="dataset")
    expected = catalog.sql(
        """SELECT sample_id FROM miwv_scores WHERE scope_dataset = 'code' AND status = 'ok'
           ORDER BY miwv DESC, sample_id LIMIT 3"""
    ).column(0).to_pylist()  # fmt: skip
    assert ranked.sample_ids == expected
