"""`select` with neighbour scopes, a similarity floor and the miwv-mean strategy (issue 17).

On the catalog of tests/test_stability.py (40 real rows of ../shared/data; catalog-wide links and
`code`'s own, losses by SQL, 3-example lists): every MIWV strategy ranks the rows of one scope only
(a catalog holding both would otherwise count samples twice), each equal to pandas over
score_current; --min-similarity and miwv-mean leave out samples with the reason counted.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from catalog import db
from catalog.errors import ArgumentError
from catalog.select import Request, select, selection_sql
from catalog.store import Catalog
from tests.conftest import CliRun, write_jsonl
from tests.test_lifecycle_views import shared_rows
from tests.test_stability import two_scopes


def frame(store: Catalog, sql: str) -> pd.DataFrame:
    with store.read() as conn:
        return db.query_arrow(conn, sql).to_pandas()


def current(store: Catalog, scope: str, dataset: str = "code") -> pd.DataFrame:
    """score_current rows of scorer 1 in a scope ('' catalog-wide) for members of `dataset`."""
    return frame(
        store,
        f"""SELECT * FROM score_current WHERE scorer_id = 1 AND scope_dataset = '{scope}'
            AND sample_id IN (SELECT sample_id FROM membership WHERE dataset = '{dataset}')""",
    )


def top(rows: pd.DataFrame, column: str, k: int, descending: bool = True) -> list[int]:
    ordered = rows.assign(key=-rows[column] if descending else rows[column]).sort_values(["key", "sample_id"])
    return ordered["sample_id"].head(k).tolist()


@pytest.mark.parametrize(("scope", "stored"), [("catalog", ""), ("dataset", "code")])
@pytest.mark.parametrize(("strategy", "column", "descending"), [("miwv", "miwv", True), ("low-miwv", "miwv", False)])
def test_each_scope_ranks_its_own_rows_once(catalog_built_by, catalog_dir, scope, stored, strategy, column, descending):
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    request = Request(strategy, top_k=8, dataset="code", scorer_id=1, embedder_id=1, scope=scope)
    chosen, _ = select(store, request)
    rows = current(store, stored)
    ok = rows[rows.status == "ok"]
    assert chosen.sample_ids == top(ok, column, 8, descending)
    assert chosen.scores == pytest.approx(ok.set_index("sample_id").loc[chosen.sample_ids, column].tolist())
    assert (
        chosen.pool_size == 20 and chosen.eligible == len(ok) and chosen.eligible + sum(chosen.excluded.values()) == 20
    )
    assert ("m.scope_dataset = 'code'" in chosen.sql) == (scope == "dataset")
    with store.read() as conn:  # the recorded SQL reproduces the selection
        assert [r[0] for r in db.execute(conn, chosen.sql)] == chosen.sample_ids


def test_a_dataset_scope_needs_its_dataset_and_a_known_scope():
    with pytest.raises(ArgumentError, match="scope 'dataset' .* give dataset") as error:
        selection_sql(Request(top_k=1, scorer_id=1, embedder_id=1, scope="dataset"))
    assert error.value.arguments == ("scope", "dataset")
    with pytest.raises(ArgumentError, match="scope must be one of catalog, dataset"):
        selection_sql(Request(top_k=1, scorer_id=1, embedder_id=1, scope="world"))
    with pytest.raises(ArgumentError, match="min_similarity applies to strategies that rank with an example"):
        selection_sql(Request("ifd", top_k=1, scorer_id=1, min_similarity=0.5))
    with pytest.raises(ArgumentError, match="min_similarity must be a cosine similarity"):
        selection_sql(Request(top_k=1, scorer_id=1, embedder_id=1, min_similarity=1.5))


def test_min_similarity_drops_weak_examples_and_counts_them(catalog_built_by, catalog_dir):
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    rows = current(store, "", "code")
    floor = float(rows.similarity.median())
    chosen, _ = select(
        store, Request(top_percent=100, dataset="code", scorer_id=1, embedder_id=1, min_similarity=floor)
    )
    strong = rows[(rows.status == "ok") & (rows.similarity >= floor)]
    assert chosen.sample_ids == top(strong, "miwv", len(strong))
    assert chosen.excluded[f"example similarity below {floor:g}"] == int((rows.similarity < floor).sum()) > 0
    assert chosen.eligible + sum(chosen.excluded.values()) == chosen.pool_size == 20


def test_miwv_mean_ranks_on_the_mean_over_complete_lists(catalog_built_by, catalog_dir):
    """Catalog-wide, 4 samples have no list and one has a 2nd example too long to score: both are
    left out with their reason; the others rank on the mean of MIWV over their 3 examples."""
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    chosen, _ = select(store, Request("miwv-mean", top_percent=50, scorer_id=1, embedder_id=1))
    examples = frame(
        store,
        """SELECT x.sample_id, o.loss - z.loss AS miwv, o.status FROM example_list x
           JOIN zero_shot_loss z ON z.sample_id = x.sample_id AND z.scorer_id = 1
           JOIN one_shot_loss o ON o.sample_id = x.sample_id AND o.neighbour_id = x.neighbour_id AND o.scorer_id = 1
           WHERE x.scope_dataset = ''""",
    )
    complete = examples.groupby("sample_id").filter(lambda g: (g.status == "ok").all())
    means = complete.groupby("sample_id", as_index=False).miwv.mean()
    assert chosen.sample_ids == top(means, "miwv", math.floor(40 * 0.5 + 0.5))
    assert chosen.scores == pytest.approx(means.set_index("sample_id").loc[chosen.sample_ids, "miwv"].tolist())
    assert chosen.excluded == {"no scored example list": 4, "too_long_one_shot": 1} and chosen.eligible == 35


def test_miwv_mean_waits_for_every_listed_example(catalog_built_by, catalog_dir):
    catalog_built_by(two_scopes)
    store = Catalog(catalog_dir)
    with store.write() as conn:  # one code sample's 3rd example has no one-shot loss yet
        db.execute(
            conn,
            """DELETE FROM one_shot_loss WHERE scorer_id = 1 AND (sample_id, neighbour_id) IN (
                   SELECT (sample_id, neighbour_id) FROM example_list WHERE scope_dataset = 'code' AND rank = 3
                   ORDER BY sample_id LIMIT 1 OFFSET 1)""",  # not the first: its 2nd example is too long
        )
    request = Request("miwv-mean", top_k=30, dataset="code", scorer_id=1, embedder_id=1, scope="dataset")
    chosen, _ = select(store, request)
    assert chosen.excluded == {"examples not all scored": 1, "too_long_one_shot": 1} and chosen.eligible == 18


def test_a_dataset_name_with_a_quote_is_quoted(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(two_scopes)
    name = "o'brien; DROP TABLE sample; --"
    result = CliRun(catalog_dir)(
        "ingest", write_jsonl(tmp_path / "q.jsonl", shared_rows("code_alpaca_2k.jsonl", 3)), "--dataset", name
    )
    assert result.exit_code == 0, result.output
    store = Catalog(catalog_dir)
    request = Request(top_k=3, dataset=name, scorer_id=1, embedder_id=1, scope="dataset", min_similarity=0.1)
    chosen, _ = select(store, request)
    assert chosen.pool_size == 3 and chosen.sample_ids == [] and chosen.excluded == {"not scored": 3}
    assert "m.scope_dataset = 'o''brien; DROP TABLE sample; --'" in chosen.sql
