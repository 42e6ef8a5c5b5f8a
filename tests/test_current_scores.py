"""score_current stays exactly what the old miwv_scores join computed, through real score runs
(two scorers, one with unscorable samples), new samples that move links, and re-scoring."""

from __future__ import annotations

import pytest

from catalog import Catalog, db
from catalog.explore import inline
from catalog.report import ALL, SUMMARY_SQL
from catalog.status import SCORES_SQL
from tests.conftest import fixture_records, write_jsonl

# The miwv_scores view of revisions 0003-0006, verbatim: the oracle.
OLD_VIEW_SQL = """
    SELECT l.sample_id,
           sc.model,
           e.name AS embedder,
           l.neighbour_id,
           l.similarity,
           z.loss AS zero_shot_loss,
           o.loss AS one_shot_loss,
           o.loss - z.loss AS miwv,
           z.n_response_tokens,
           CASE WHEN z.status <> 'ok' THEN z.status
                WHEN l.neighbour_id IS NULL THEN 'no_neighbour'
                ELSE o.status END AS status,
           coalesce(o.example_truncated, false) AS example_truncated,
           sc.scorer_id,
           l.embedder_id,
           sc.template,
           sc.max_length
    FROM neighbour_link l
    JOIN embedder e USING (embedder_id)
    JOIN zero_shot_loss z ON z.sample_id = l.sample_id
    JOIN scorer sc ON sc.scorer_id = z.scorer_id
    LEFT JOIN one_shot_loss o
           ON o.sample_id = l.sample_id AND o.scorer_id = z.scorer_id AND o.neighbour_id = l.neighbour_id
    WHERE o.sample_id IS NOT NULL OR l.neighbour_id IS NULL OR z.status <> 'ok'
"""

# The overview's counts per scorer and embedder before score_current, verbatim: the oracle.
OLD_SCORES_SQL = """
    WITH pairs AS (SELECT DISTINCT scorer_id, embedder_id FROM score_run),
         any_one_shot AS (SELECT DISTINCT sample_id, scorer_id FROM one_shot_loss),
         states AS (
            SELECT p.scorer_id, p.embedder_id,
                   CASE WHEN z.status <> 'ok' OR o.status <> 'ok' OR (z.status = 'ok' AND l.neighbour_id IS NULL)
                             THEN 'unscorable'
                        WHEN o.status = 'ok' THEN 'scored'
                        WHEN a.sample_id IS NOT NULL THEN 'stale'
                        ELSE 'unscored' END AS state
            FROM pairs p
            JOIN neighbour_link l ON l.embedder_id = p.embedder_id
            LEFT JOIN zero_shot_loss z ON z.sample_id = l.sample_id AND z.scorer_id = p.scorer_id
            LEFT JOIN one_shot_loss o
                   ON o.sample_id = l.sample_id AND o.scorer_id = p.scorer_id AND o.neighbour_id = l.neighbour_id
            LEFT JOIN any_one_shot a ON a.sample_id = l.sample_id AND a.scorer_id = p.scorer_id)
    SELECT s.scorer_id, sc.model, sc.template, sc.template_revision, sc.max_length, e.name AS embedder,
           count(*) FILTER (WHERE state = 'scored') AS scored,
           count(*) FILTER (WHERE state = 'unscorable') AS unscorable,
           count(*) FILTER (WHERE state = 'stale') AS stale,
           count(*) FILTER (WHERE state = 'unscored') AS unscored,
           (SELECT max(finished_at) FROM score_run r WHERE r.scorer_id = s.scorer_id) AS last_run
    FROM states s JOIN scorer sc USING (scorer_id) JOIN embedder e USING (embedder_id)
    GROUP BY ALL ORDER BY s.scorer_id, e.name
"""

# The `report` summary before score_current (unnesting the samples view), verbatim: the oracle.
OLD_SUMMARY_SQL = """
    WITH scored AS (
        SELECT m.*, unnest(s.datasets) AS dataset
        FROM miwv_scores m JOIN samples s USING (sample_id)
        WHERE m.scorer_id = $scorer AND m.embedder_id = $embedder AND m.status = 'ok'
    ),
    rows AS (SELECT * FROM scored UNION ALL SELECT * REPLACE ($all AS dataset) FROM scored)
    SELECT dataset,
           count(DISTINCT sample_id) AS scored,
           round(quantile_cont(miwv, 0.05), 4) AS p05,
           round(quantile_cont(miwv, 0.25), 4) AS p25,
           round(quantile_cont(miwv, 0.50), 4) AS median,
           round(quantile_cont(miwv, 0.75), 4) AS p75,
           round(quantile_cont(miwv, 0.95), 4) AS p95,
           round(avg((miwv > 0)::INTEGER), 4) AS positive,
           round(quantile_cont(similarity, 0.25), 4) AS sim_p25,
           round(quantile_cont(similarity, 0.50), 4) AS sim_median,
           round(quantile_cont(similarity, 0.75), 4) AS sim_p75,
           round(avg(zero_shot_loss), 4) AS l_zero,
           round(avg(one_shot_loss), 4) AS l_one,
           round(corr(zero_shot_loss, one_shot_loss), 4) AS corr
    FROM rows GROUP BY dataset ORDER BY dataset = $all, dataset
"""

CURRENT_COLUMNS = """sample_id, scorer_id, embedder_id, neighbour_id, similarity, zero_shot_loss, one_shot_loss, miwv,
                     n_response_tokens, status, example_truncated"""


def assert_current(catalog_dir) -> list[tuple]:
    """score_current and the miwv_scores view over it equal the old join, row for row, and the
    overview's counts and the report's summary equal the old ones; returns score_current's rows."""
    with Catalog(catalog_dir).read() as conn:
        oracle = db.execute(conn, f"{OLD_VIEW_SQL} ORDER BY ALL")
        assert db.execute(conn, "SELECT * EXCLUDE (scope, scope_dataset) FROM miwv_scores ORDER BY ALL") == oracle
        table = db.execute(conn, f"SELECT {CURRENT_COLUMNS} FROM score_current ORDER BY ALL")
        assert table == db.execute(conn, f"SELECT {CURRENT_COLUMNS} FROM ({OLD_VIEW_SQL}) ORDER BY ALL")
        catalog_wide = f"SELECT * EXCLUDE (scope) FROM ({SCORES_SQL}) WHERE scope = 'catalog' ORDER BY ALL"
        assert db.execute(conn, catalog_wide) == db.execute(conn, f"SELECT * FROM ({OLD_SCORES_SQL}) ORDER BY ALL")
        for scorer, embedder in db.execute(conn, "SELECT DISTINCT scorer_id, embedder_id FROM score_run"):
            params = {"scorer": scorer, "embedder": embedder, "all": ALL}
            summary, old_summary = (db.execute(conn, inline(sql, params)) for sql in (SUMMARY_SQL, OLD_SUMMARY_SQL))
            assert repr(summary) == repr(old_summary)  # repr: a one-sample correlation is NaN on both sides
    return table


def links(catalog_dir) -> dict[int, int | None]:
    with Catalog(catalog_dir).read() as conn:
        return dict(db.execute(conn, "SELECT sample_id, neighbour_id FROM neighbours"))


@pytest.mark.slow
def test_score_current_equals_the_old_view_through_scoring_linking_and_rescoring(tmp_path, cli_run, catalog_dir):
    rows = fixture_records()
    short = [r for r in rows if len(r["instruction"]) + len(r["input"]) + len(r["output"]) < 200]
    long = [r for r in rows if len(r["output"]) > 2000][:2]
    first, second = short[:8] + long, short[8:14]

    assert cli_run("ingest", write_jsonl(tmp_path / "a.jsonl", first), "--dataset", "a").exit_code == 0
    assert cli_run("embed").exit_code == 0
    assert cli_run("score", "--model", "smollm2-135m", "--limit", "6").exit_code == 0
    assert len(assert_current(catalog_dir)) == 6
    result = cli_run("score", "--model", "smollm2-135m", "--max-length", "150")
    assert result.exit_code == 0, result.output
    scored = assert_current(catalog_dir)
    statuses = {row[9] for row in scored}
    assert "too_long" in statuses and "ok" in statuses, statuses

    before = links(catalog_dir)
    assert cli_run("ingest", write_jsonl(tmp_path / "b.jsonl", second), "--dataset", "b").exit_code == 0
    assert cli_run("embed").exit_code == 0
    moved = {s for s, n in before.items() if links(catalog_dir)[s] != n}
    assert moved, "six new samples should move some neighbours"
    relinked = assert_current(catalog_dir)
    assert len(relinked) < len(scored)  # a moved link with an ok zero-shot pass is stale until re-scored

    assert cli_run("score", "--model", "smollm2-135m", "--max-length", "150").exit_code == 0
    assert cli_run("score", "--model", "smollm2-135m").exit_code == 0
    rescored = assert_current(catalog_dir)
    assert {(row[0], row[1]) for row in rescored} >= {(row[0], row[1]) for row in scored}
