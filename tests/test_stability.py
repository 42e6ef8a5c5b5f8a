"""How stable MIWV is over each sample's K nearest examples (issue 17, section 3).

- scoring.examples.nearest_examples on real MiniLM vectors of ../shared/data rows (with exact
  duplicate user texts, and two texts the tokenizer cannot tell apart): equal to a float64 brute
  force, rank 1 bit-equal to scoring.neighbours.nearest, the same for any block size, padded.
- catalog.examples on a real catalog of 40 rows of ../shared/data (links and losses by SQL, as
  tests/test_lifecycle_views.py writes them; lists by save_lists from nearest_examples over the
  stored vectors): `stability` equals numpy and scipy over the rows read from the tables, per scope;
  `listed_pairs` names exactly the missing one-shot passes; `report` shows the section.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from catalog import current_scores, db
from catalog.embed import embedders
from catalog.examples import listed_pairs, save_lists, stability
from catalog.neighbours import NO_NEIGHBOUR
from catalog.report import write_report
from catalog.store import Catalog
from scoring.examples import nearest_examples
from scoring.neighbours import Points, current_points, nearest, pair_similarity
from tests.conftest import CliRun
from tests.test_lifecycle_views import add_links_and_scores, code_and_dolly, shared_rows

K = 3  # examples per sample in these tests


# ---- nearest_examples on real MiniLM vectors ------------------------------------------------


def brute_force(queries: Points, candidates: Points, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k best candidates outside its group by float64 similarity, ties to the smaller id."""
    ids = np.full((len(queries.ids), k), NO_NEIGHBOUR, np.int64)
    sims = np.full((len(queries.ids), k), np.nan)
    for row in range(len(queries.ids)):
        allowed = np.flatnonzero(candidates.groups != queries.groups[row])
        exact = pair_similarity(np.repeat(queries.vectors[row : row + 1], len(allowed), 0), candidates.vectors[allowed])
        order = np.lexsort((candidates.ids[allowed], -exact))[:k]
        ids[row, : len(order)], sims[row, : len(order)] = candidates.ids[allowed][order], exact[order]
    return ids, sims


@pytest.fixture(scope="module")
def minilm_points() -> Points:
    """MiniLM vectors of 120 Code Alpaca and 120 Dolly user texts, plus three copies of one text (one
    group, the same vector, as exact duplicates have) and a copy with a trailing space (another group:
    the tokenizer drops the space, so the vector is the original's: a tie across groups)."""
    from scoring.embed import Embedder, resolve_embedder

    rows = shared_rows("code_alpaca_2k.jsonl", 120) + shared_rows("dolly_3k_alpagasus.jsonl", 120)
    texts = [r["instruction"] + ("\n\n" + r["input"] if r["input"] else "") for r in rows]
    vectors = Embedder(resolve_embedder("minilm"), device="cpu").encode(texts)
    copies = [5, 5, 5, 17]  # rows copied: three duplicates of text 5, and text 17 with a trailing space
    groups = np.r_[np.arange(len(texts)), [5, 5, 5, len(texts)]].astype(np.int64)
    vectors = np.concatenate([vectors, vectors[copies]])
    ids = np.arange(len(groups), dtype=np.int64) * 7 - 500
    return Points(ids, vectors, groups)


@pytest.mark.slow  # the real MiniLM
def test_nearest_examples_are_exact_and_rank_1_is_the_link(minilm_points):
    points = minilm_points
    ids, sims = nearest_examples(points, points, 5, rows_per_block=64)
    want_ids, want_sims = brute_force(points, points, 5)
    assert np.array_equal(ids, want_ids) and np.array_equal(sims, want_sims)
    link = nearest(points, points, rows_per_block=50)
    assert np.array_equal(ids[:, 0], link.ids) and np.array_equal(sims[:, 0], link.similarity)
    duplicates = np.flatnonzero(points.groups == 5)
    assert len(duplicates) == 4 and not np.isin(ids[duplicates], points.ids[duplicates]).any()
    spaced = np.flatnonzero(points.groups == points.groups.max())[0]  # text 17 with a trailing space
    assert ids[17, 0] == points.ids[spaced] and ids[spaced, 0] == points.ids[17]  # each other's nearest
    assert sims[17, 0] == sims[spaced, 0] and ids[17, 1] == ids[spaced, 1]
    for block in (1, 7, 1000):
        again = nearest_examples(points, points, 5, rows_per_block=block)
        assert np.array_equal(again[0], ids) and np.array_equal(again[1], sims)


@pytest.mark.slow  # the real MiniLM
def test_nearest_examples_pads_rows_with_fewer_candidates(minilm_points):
    """Candidates: the four copies of text 5 (one group) and two other texts: a copy gets 2 examples."""
    points = minilm_points
    few = points.subset(np.isin(points.groups, [5, 6, 9]))
    ids, sims = nearest_examples(few, few, 4)
    copies = few.groups == 5
    assert (ids[copies, 2:] == NO_NEIGHBOUR).all() and np.isnan(sims[copies, 2:]).all()
    assert set(ids[copies, :2].ravel()) == set(few.ids[~copies])
    assert (ids[~copies] != NO_NEIGHBOUR).all()  # the others have 1 + 4 copies to choose from
    empty = nearest_examples(few.subset(np.zeros(len(few.ids), bool)), few, 2)
    assert empty[0].shape == (0, 2)


# ---- lists and stability on a real catalog ---------------------------------------------------


def scope_members(store: Catalog, scope: str) -> np.ndarray:
    with store.read() as conn:
        rows = db.execute(conn, "SELECT DISTINCT sample_id FROM membership WHERE $s = '' OR dataset = $s", {"s": scope})
    return np.array(sorted(r[0] for r in rows), np.int64)


def add_lists(store: Catalog, scope: str, seed: int, skip: int = 0) -> np.ndarray:
    """K-example lists of the scope's members (but the first `skip`) from the stored vectors, the scope's
    links (rank 1) and one-shot losses for every listed example that has none, uniform in [0.3, 3.0]
    (the 2nd example's pass of the first listed sample is too long); returns the listed sample ids."""
    points = current_points(store, embedders(store)[0].vectors(store).load(), scope)
    assert np.array_equal(points.ids, scope_members(store, scope))
    ids, sims = nearest_examples(points, points, K)
    listed = points.ids[skip:]
    save_lists(store, 1, scope, listed, ids[skip:], sims[skip:])
    pairs = pa.table({"sample_id": np.repeat(points.ids, K), "neighbour_id": ids.ravel()})
    pairs = pairs.append_column("loss", pa.array(np.random.default_rng(seed).uniform(0.3, 3.0, pairs.num_rows)))
    links = pa.table({"sample_id": points.ids, "neighbour_id": ids[:, 0], "similarity": sims[:, 0]})
    with store.write() as conn, db.registered(conn, "_pairs", pairs), db.registered(conn, "_links", links):
        if scope:
            db.execute(
                conn,
                """INSERT INTO neighbour_link (sample_id, embedder_id, neighbour_id, similarity, run_id, computed_at,
                                               scope_dataset)
                   SELECT sample_id, 1, neighbour_id, similarity, 1, now(), $scope FROM _links""",
                {"scope": scope},
            )
        db.execute(
            conn,
            """INSERT INTO one_shot_loss
               SELECT sample_id, 1, neighbour_id, 'ok', 10 * loss, 10, loss, 200, 1, now(), false FROM _pairs
               ON CONFLICT DO NOTHING""",
        )
        db.execute(
            conn,
            """UPDATE one_shot_loss SET status = 'too_long_one_shot', loss = NULL, sum_nll = NULL
               WHERE scorer_id = 1 AND sample_id = $sample AND neighbour_id = $neighbour""",
            {"sample": int(listed[0]), "neighbour": int(ids[skip, 1])},
        )
        current_scores.rebuild(conn)
    return listed


def two_scopes(run: CliRun) -> None:
    """code + dolly (40 rows), catalog-wide links and scorer 1's losses by SQL, then 3-example lists:
    catalog-wide for all but 4 samples, and within `code` for every code sample."""
    code_and_dolly(run)
    store = Catalog(run.catalog)
    add_links_and_scores(store)
    add_lists(store, "", seed=11, skip=4)
    add_lists(store, "code", seed=12)


def expected_stability(store: Catalog, scope: str, percent: float = 5.0) -> dict:
    """The figures from the tables (not the view): each current member's list, MIWV with each listed
    example whose losses are ok, the scope's current scores."""
    with store.read() as conn:
        rows = db.records(
            conn,
            """SELECT x.sample_id, x.rank, o.loss - z.loss AS miwv
               FROM example_list x JOIN zero_shot_loss z ON z.sample_id = x.sample_id AND z.scorer_id = 1
                    JOIN one_shot_loss o ON o.sample_id = x.sample_id AND o.neighbour_id = x.neighbour_id
                                        AND o.scorer_id = 1
               WHERE x.scope_dataset = $s AND z.status = 'ok' AND o.status = 'ok'""",
            {"s": scope},
        )
        losses = db.execute(
            conn,
            """SELECT one_shot_loss, zero_shot_loss, sample_id FROM score_current
               WHERE scope_dataset = $s AND status = 'ok'""",
            {"s": scope},
        )
    members = set(scope_members(store, scope).tolist())
    by_sample: dict[int, dict[int, float]] = {}
    for row in rows:
        if row["sample_id"] in members:
            by_sample.setdefault(row["sample_id"], {})[row["rank"]] = row["miwv"]
    both = sorted(s for s, ranked in by_sample.items() if 1 in ranked and 2 in ranked)
    first = np.array([by_sample[s][1] for s in both])
    second = np.array([by_sample[s][2] for s in both])
    k = max(1, math.floor(len(both) * percent / 100 + 0.5))

    def top(values: np.ndarray) -> set[int]:
        return {both[i] for i in sorted(range(len(both)), key=lambda i: (-values[i], both[i]))[:k]}

    one, zero = np.array([[r[0], r[1]] for r in losses if r[2] in members]).T
    spreads = [max(v.values()) - min(v.values()) for v in by_sample.values() if len(v) >= 2]
    return {
        "samples": len(both),
        "examples": max(max(v) for v in by_sample.values()),
        "rank_correlation": stats.spearmanr(first, second).statistic,
        "top_share": len(top(first) & top(second)) / k,
        "loss_correlation": np.corrcoef(one, zero)[0, 1],
        "spread": float(np.median(spreads)),
    }


@pytest.mark.parametrize("scope", ["", "code"])
def test_stability_equals_a_direct_computation(catalog_built_by, catalog_dir, scope):
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    got = stability(store, 1, 1, scope, percent=25)
    want = expected_stability(store, scope, percent=25)
    assert got.samples == want["samples"] == (36 - 1 if scope == "" else 20 - 1)  # one 2nd example too long
    assert got.examples == want["examples"] == K and got.percent == 25
    for name in ("rank_correlation", "top_share", "loss_correlation", "spread"):
        assert getattr(got, name) == pytest.approx(want[name], abs=1e-12), name
    assert got.meaning.startswith("MIWV here") and f"top {got.percent:g}%" in got.meaning
    assert got.as_dict()["meaning"] == got.meaning


def test_stability_reads_current_lists_only_and_none_without_two_examples(catalog_built_by, catalog_dir):
    """A list whose rank 1 is no longer the sample's link leaves the figures; a scorer or scope
    without lists has none."""
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    before = stability(store, 1, 1, "code")
    with store.write() as conn:
        moved = db.execute(
            conn,
            """SELECT l.sample_id FROM neighbour_link l
               JOIN example_list x USING (sample_id, embedder_id, scope_dataset)
               JOIN one_shot_loss o ON o.sample_id = x.sample_id AND o.neighbour_id = x.neighbour_id
               WHERE l.scope_dataset = 'code' AND x.rank = 2 AND o.status = 'ok' ORDER BY 1 LIMIT 1""",
        )[0][0]
        db.execute(  # its link now names its 2nd example (as if a run had found it nearer): the list is stale
            conn,
            """UPDATE neighbour_link SET neighbour_id = (SELECT neighbour_id FROM example_list
                   WHERE sample_id = $s AND scope_dataset = 'code' AND rank = 2)
               WHERE sample_id = $s AND scope_dataset = 'code'""",
            {"s": moved},
        )
    after = stability(store, 1, 1, "code")
    assert after.samples == before.samples - 1 and after.samples == expected_with_link_rule(store, "code")
    assert stability(store, 1, 1, "dolly") is None
    assert stability(store, 2, 1, "") is None


def expected_with_link_rule(store: Catalog, scope: str) -> int:
    """Samples whose list's rank 1 is their current link, with ok MIWV at ranks 1 and 2."""
    with store.read() as conn:
        return db.execute(
            conn,
            """SELECT count(*) FROM neighbour_link l
               JOIN example_list a ON a.sample_id = l.sample_id AND a.scope_dataset = l.scope_dataset AND a.rank = 1
                                  AND a.neighbour_id = l.neighbour_id
               JOIN example_list b ON b.sample_id = l.sample_id AND b.scope_dataset = l.scope_dataset AND b.rank = 2
               JOIN one_shot_loss o ON o.sample_id = b.sample_id AND o.neighbour_id = b.neighbour_id AND o.status = 'ok'
               WHERE l.scope_dataset = $s""",
            {"s": scope},
        )[0][0]


def test_listed_pairs_are_the_missing_one_shot_passes(catalog_built_by, catalog_dir):
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    samples, examples = listed_pairs(store, 1, "code")
    with store.read() as conn:
        stored = db.execute(
            conn, "SELECT sample_id, neighbour_id FROM example_list WHERE scope_dataset = 'code' ORDER BY 1, 2"
        )
    assert list(zip(samples.tolist(), examples.tolist(), strict=True)) == stored and len(stored) == 20 * K
    assert listed_pairs(store, 1, "code", missing_for=1)[0].size == 0  # add_lists scored every pair
    with store.write() as conn:
        db.execute(conn, "DELETE FROM one_shot_loss WHERE sample_id = $s", {"s": stored[4][0]})
    missing = listed_pairs(store, 1, "code", ids=np.array([stored[4][0], stored[9][0]]), missing_for=1)
    assert [(int(a), int(b)) for a, b in zip(*missing, strict=True)] == [p for p in stored if p[0] == stored[4][0]]
    assert listed_pairs(store, 1, "code", missing_for=2)[0].size == 20 * K  # scorer 2 has no one-shot loss


def test_save_lists_replaces_and_writes_current_lists_only(catalog_built_by, catalog_dir):
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    code, dolly = scope_members(store, "code"), np.setdiff1d(scope_members(store, ""), scope_members(store, "code"))
    lists = np.array([[dolly[0], dolly[1]], [code[2], NO_NEIGHBOUR], [code[3], code[4]]])
    written = save_lists(store, 1, "code", np.array([code[0], code[1], dolly[2]]), lists, np.full((3, 2), 0.5))
    with store.read() as conn:
        kept = db.execute(
            conn, "SELECT sample_id, rank, neighbour_id FROM example_list WHERE scope_dataset = 'code' ORDER BY 1, 2"
        )
    # code[0] names dolly samples and dolly[2] is no code member: neither is written; code[1] keeps one example
    assert written == 1 and (code[1], 1, code[2]) in kept and not [r for r in kept if r[0] in (code[0], dolly[2])]
    assert len(kept) == 18 * K + 1


def test_report_has_a_stability_section_per_scope(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    catalog_wide = write_report(store, 1, 1, "smollm2-135m", tmp_path / "catalog_wide")
    assert [row["dataset"] for row in catalog_wide.stability["rows"]] == ["(all)"]
    assert catalog_wide.stability["rows"][0]["samples"] == stability(store, 1, 1, "").samples
    per_dataset = write_report(store, 1, 1, "smollm2-135m", tmp_path / "dataset", scope="dataset")
    (row,) = per_dataset.stability["rows"]  # dolly has no lists in its own scope
    assert row["dataset"] == "code" and row["rank_correlation"] == stability(store, 1, 1, "code").rank_correlation
    assert [r["dataset"] for r in per_dataset.summary] == ["code", "(all)"]  # only code has dataset-scope scores
    summary = (tmp_path / "dataset" / "summary.md").read_text(encoding="utf-8")
    assert "## Stability" in summary and row["meaning"] in summary
