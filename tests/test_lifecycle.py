"""The catalog changes and forgets (issue 16), at the library level: replace, remove, retire,
come back, purge, history, dry runs. Real rows from the committed fixture, real DuckDB and
LanceDB files; vectors are random here (what a removal does to them does not depend on a model)."""

from __future__ import annotations

import numpy as np
import pytest

from catalog import Catalog, UserError, db, lifecycle
from catalog.embed import register_embedder
from catalog.errors import ArgumentError
from catalog.ingest import ingest_file
from tests.conftest import fixture_records, write_jsonl

ROWS = fixture_records()


@pytest.fixture
def two_datasets(tmp_path) -> tuple[Catalog, dict[str, int]]:
    """'alpaca' v1 = rows 0-59, 'other' = rows 50-89 (10 shared); ids by the row's instruction."""
    catalog = Catalog(tmp_path / "catalog")
    ingest_file(catalog, write_jsonl(tmp_path / "v1.jsonl", ROWS[:60]), "alpaca")
    ingest_file(catalog, write_jsonl(tmp_path / "other.jsonl", ROWS[50:90]), "other")
    return catalog, _ids(catalog)


def _ids(catalog: Catalog) -> dict[str, int]:
    with catalog.read() as conn:
        return dict(db.execute(conn, "SELECT instruction, sample_id FROM sample"))


def _members(catalog: Catalog, dataset: str) -> set[int]:
    with catalog.read() as conn:
        return {r[0] for r in db.execute(conn, "SELECT sample_id FROM membership WHERE dataset = $d", {"d": dataset})}


def _count(catalog: Catalog, sql: str) -> int:
    with catalog.read() as conn:
        return db.execute(conn, sql)[0][0]


def _every_table(catalog: Catalog) -> dict[str, list]:
    with catalog.read() as conn:
        tables = [r[0] for r in db.execute(conn, "SELECT table_name FROM duckdb_tables() ORDER BY 1")]
        return {t: db.execute(conn, f"SELECT * FROM {t} ORDER BY ALL") for t in tables}


def test_replace_makes_the_dataset_exactly_the_file(tmp_path, two_datasets):
    catalog, ids = two_datasets
    v2 = ROWS[10:58] + [dict(ROWS[5], output=ROWS[5]["output"] + " (corrected)")]  # 0-9 and 58-59 dropped, 5 fixed
    result = ingest_file(catalog, write_jsonl(tmp_path / "v2.jsonl", v2), "alpaca", replace=True)

    now = _ids(catalog)
    assert _members(catalog, "alpaca") == {_id(now, r) for r in v2}
    assert (result.rows_in, result.rows_out, result.version) == (1, 12, 2)
    assert result.samples_retired == 10  # rows 58-59 stay in 'other' (rows 50-89)
    for row in ROWS[10:58]:  # rows that stay keep their ids
        assert _id(now, row) == ids[row["instruction"]]
    assert _members(catalog, "other") == {ids[r["instruction"]] for r in ROWS[50:90]}
    assert _count(catalog, "SELECT count(*) FROM samples") == 49 + 40 - 8  # rows 50-57 are in both
    with catalog.read() as conn:
        left = db.execute(conn, "SELECT state, count(*) FROM departures WHERE dataset = 'alpaca' GROUP BY 1 ORDER BY 1")
    assert left == [("current", 2), ("retired", 10)]


def _id(ids: dict[str, int], row: dict) -> int:
    return ids[row["instruction"]]


def test_a_sample_that_leaves_one_dataset_stays_while_another_holds_it(two_datasets):
    catalog, ids = two_datasets
    shared = [ids[r["instruction"]] for r in ROWS[50:60]]
    removed = lifecycle.remove(catalog, dataset="alpaca")
    assert (removed.memberships_out, removed.samples_retired) == (60, 50)
    assert removed.datasets == [{"dataset": "alpaca", "rows_out": 60, "members_after": 0, "version": 2}]
    with catalog.read() as conn:
        current = {r[0] for r in db.execute(conn, "SELECT sample_id FROM samples")}
    assert set(shared) <= current and len(current) == 40


def test_a_retired_sample_comes_back_with_its_row_and_a_new_version(tmp_path, two_datasets):
    catalog, ids = two_datasets
    lifecycle.remove(catalog, dataset="alpaca")
    again = ingest_file(catalog, write_jsonl(tmp_path / "back.jsonl", ROWS[:5]), "alpaca")
    assert (again.rows_new, again.rows_in, again.version) == (0, 5, 3)  # the sample rows were kept
    assert _members(catalog, "alpaca") == {ids[r["instruction"]] for r in ROWS[:5]}


def test_remove_where_runs_in_the_sql_sandbox_and_only_on_current_samples(two_datasets, tmp_path):
    catalog, ids = two_datasets
    with pytest.raises(ArgumentError, match="where"):
        lifecycle.remove(catalog, where="1=1; DELETE FROM sample")
    with pytest.raises(ArgumentError, match="where"):
        lifecycle.remove(catalog, where=f"length(read_text('{tmp_path}/v1.jsonl')) > 0")
    nothing = lifecycle.remove(catalog, where="instruction = 'no such instruction'")
    assert nothing.change_id is None and "nothing to remove" in nothing.message
    target = ROWS[3]["instruction"]
    done = lifecycle.remove(catalog, where="instruction = " + _quoted(target))
    assert (done.memberships_out, done.samples_retired) == (1, 1)
    again = lifecycle.remove(catalog, where="instruction = " + _quoted(target))
    assert again.change_id is None  # a retired sample is not matched again


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_ids_and_dataset_together_remove_from_that_dataset_only(two_datasets, tmp_path):
    catalog, ids = two_datasets
    shared = ids[ROWS[55]["instruction"]]
    listing = tmp_path / "takedown.txt"
    listing.write_text(f"# takedown request\n{shared}\n\n")
    removed = lifecycle.remove(catalog, ids=listing, dataset="other")
    assert (removed.memberships_out, removed.samples_retired) == (1, 0)
    assert shared in _members(catalog, "alpaca") and shared not in _members(catalog, "other")


@pytest.mark.parametrize(
    ("text", "message"),
    [("12\nabc\n", "line 2: 'abc' is not a sample_id"), ("99999999999999999999\n", "64-bit"), (b"\xff\xfe", "UTF-8")],
)
def test_an_id_file_that_cannot_be_read_is_one_clear_error(two_datasets, tmp_path, text, message):
    catalog, _ = two_datasets
    listing = tmp_path / "ids.txt"
    listing.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = _every_table(catalog)
    with pytest.raises(UserError, match=message):
        lifecycle.remove(catalog, ids=listing)
    with pytest.raises(UserError, match="cannot read the id file"):
        lifecycle.remove(catalog, ids=tmp_path / "missing.txt")
    assert _every_table(catalog) == before


def test_unknown_dataset_and_no_selector_are_refused(two_datasets):
    catalog, _ = two_datasets
    with pytest.raises(UserError, match="no dataset 'nope'.*datasets: alpaca, other"):
        lifecycle.remove(catalog, dataset="nope")
    with pytest.raises(ArgumentError, match="say what to remove"):
        lifecycle.remove(catalog)


def test_removing_everything_needs_everything(two_datasets):
    catalog, _ = two_datasets
    before = _every_table(catalog)
    with pytest.raises(UserError, match="every sample in the catalog \\(90\\).*--all"):
        lifecycle.remove(catalog, where="true")
    assert _every_table(catalog) == before
    assert lifecycle.remove(catalog, where="true", dry_run=True).samples_retired == 90
    done = lifecycle.remove(catalog, everything=True)
    assert (done.samples_retired, _count(catalog, "SELECT count(*) FROM samples")) == (90, 0)


def test_a_dry_run_reports_and_writes_nothing(two_datasets):
    catalog, _ = two_datasets
    _embed_randomly(catalog)
    before = _every_table(catalog)
    files = sorted(p.name for p in catalog.path.rglob("*"))
    plan = lifecycle.remove(catalog, dataset="alpaca", purge=True, dry_run=True)
    assert (plan.dry_run, plan.change_id, plan.samples_retired, plan.samples_purged) == (True, None, 50, 50)
    assert plan.links_to_repair == _count(
        catalog,
        """SELECT count(*) FROM neighbour_link WHERE neighbour_id IN (SELECT sample_id FROM membership
             WHERE dataset = 'alpaca' AND sample_id NOT IN (SELECT sample_id FROM membership WHERE dataset = 'other'))
             AND sample_id IN (SELECT sample_id FROM membership WHERE dataset = 'other')""",
    )
    assert plan.links_to_repair > 0
    assert _every_table(catalog) == before
    assert sorted(p.name for p in catalog.path.rglob("*")) == files


def _embed_randomly(catalog: Catalog) -> np.ndarray:
    """Random unit vectors for every sample and each sample's nearest other one as its link (SQL)."""
    embedder = register_embedder(catalog, "random", "/none", 8, "mean", "f00d", None)
    with catalog.read() as conn:
        ids = np.array([r[0] for r in db.execute(conn, "SELECT sample_id FROM sample ORDER BY 1")], np.int64)
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embedder.vectors(catalog).add(ids, vectors)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    best = similarity.argmax(axis=1)
    with catalog.write() as conn:
        db.execute(conn, "INSERT INTO neighbour_run VALUES (1, 1, 'exact', 'full', 0, 0, 0, now(), now(), '')")
        for i, j in enumerate(best):
            db.execute(
                conn,
                "INSERT INTO neighbour_link VALUES ($s, 1, $n, $sim, 1, now(), '')",
                {"s": int(ids[i]), "n": int(ids[j]), "sim": float(similarity[i, j])},
            )
    return ids


def test_purge_deletes_text_losses_links_and_vectors_and_keeps_the_selection_history(two_datasets):
    catalog, ids = two_datasets
    all_ids = _embed_randomly(catalog)
    gone = sorted({ids[r["instruction"]] for r in ROWS[:50]})
    with catalog.write() as conn:
        db.execute(conn, "INSERT INTO scorer VALUES (1, 'm', 'src', 'fp', 'chat', 64, 'float32', now(), 2, 'h', 't')")
        db.execute(conn, "INSERT INTO zero_shot_loss SELECT sample_id, 1, 'ok', 2, 1, 2, 9, 1, now() FROM sample")
        db.execute(conn, "INSERT INTO response_loss SELECT sample_id, 1, 'ok', 3, 1, 3, 2, 1, now() FROM sample")
        db.execute(
            conn,
            """INSERT INTO selection (selection_id, strategy, pool_size, eligible, selected, sql, created_at)
               VALUES (1, 'random', 80, 80, 3, 'SELECT 1', now())""",
        )
        db.execute(
            conn, "INSERT INTO selection_member VALUES (1, $a, 1, NULL), (1, $b, 2, NULL)", {"a": gone[0], "b": gone[1]}
        )
    embedder = register_embedder(catalog, "random", "/none", 8, "mean", "f00d", None)
    lifecycle.remove(catalog, dataset="alpaca")  # retired first, purged later
    assert np.isin(gone, embedder.vectors(catalog).ids()).all()  # retiring keeps the vectors
    purged = lifecycle.remove(catalog, purge=True)
    assert purged.samples_purged == 50 and purged.memberships_out == 0
    table = embedder.vectors(catalog)  # a handle opened before the purge reads a version it deleted
    assert set(table.ids()) == set(all_ids) - set(gone)
    assert len(table._open().list_versions()) == 1  # no older version still holds the vectors
    for sql in (
        "SELECT count(*) FROM sample WHERE sample_id IN (SELECT sample_id FROM purged_sample)",
        "SELECT count(*) FROM zero_shot_loss WHERE sample_id IN (SELECT sample_id FROM purged_sample)",
        "SELECT count(*) FROM response_loss WHERE sample_id IN (SELECT sample_id FROM purged_sample)",
        "SELECT count(*) FROM neighbour_link WHERE sample_id IN (SELECT sample_id FROM purged_sample)"
        " OR neighbour_id IN (SELECT sample_id FROM purged_sample)",
    ):
        assert _count(catalog, sql) == 0, sql
    assert _count(catalog, "SELECT count(*) FROM selection_member") == 2
    assert _count(catalog, "SELECT count(*) FROM departures WHERE state = 'purged'") == 50
    assert _count(catalog, "SELECT bool_and(vectors_done) FROM catalog_change")


def test_the_next_write_finishes_a_purge_stopped_before_its_vectors_went(two_datasets):
    catalog, ids = two_datasets
    _embed_randomly(catalog)
    embedder = register_embedder(catalog, "random", "/none", 8, "mean", "f00d", None)
    lifecycle.remove(catalog, dataset="alpaca", purge=True)
    victim = ids[ROWS[0]["instruction"]]
    embedder.vectors(catalog).add(np.array([victim]), np.ones((1, 8), np.float32))  # as if LanceDB's step had not run
    with catalog.write() as conn:
        db.execute(conn, "UPDATE catalog_change SET vectors_done = false WHERE kind = 'remove'")
    assert lifecycle.finish_purges(catalog) == 1
    assert victim not in embedder.vectors(catalog).ids()
    assert lifecycle.finish_purges(catalog) == 0


def test_history_lists_each_version_of_each_dataset(tmp_path, two_datasets):
    catalog, _ = two_datasets
    ingest_file(catalog, write_jsonl(tmp_path / "v2.jsonl", ROWS[5:65]), "alpaca", replace=True)
    lifecycle.remove(catalog, where="instruction = " + _quoted(ROWS[70]["instruction"]))
    rows = lifecycle.history(catalog, "alpaca")
    assert [(r["version"], r["kind"], r["rows_in"], r["rows_out"], r["members"]) for r in rows] == [
        (1, "ingest", 60, 0, 60),
        (2, "replace", 5, 5, 60),
    ]
    assert [r["kind"] for r in lifecycle.history(catalog, "other")] == ["ingest", "remove"]
    with pytest.raises(UserError, match="no dataset 'nope'"):
        lifecycle.history(catalog, "nope")
