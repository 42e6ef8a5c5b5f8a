"""`report` with IFD beside MIWV (issue 18): the IFD section's figures (quartiles of IFD and
ifd_ppl, the shares Cherry LLM's and Superfiltering's filters keep, the mean response loss) and
MIWV's agreement with IFD (Spearman, top-5% overlap) equal numpy and scipy over the same rows read
from the loss tables; a scorer without response losses gets the report it always got.

A real catalog of 40 rows of ../shared/data, with links and losses written by SQL (no model; see
tests/test_lifecycle_views.py); `add_response_losses` writes the response-alone losses by SQL.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from catalog import db
from catalog.report import ALL, write_report
from catalog.store import Catalog
from tests.conftest import CliRun
from tests.test_lifecycle_views import add_links_and_scores, code_and_dolly, ids_of


def two_scorers(run: CliRun) -> None:
    """code + dolly, with links and two scorers of losses by SQL; scorer 2's one-shot losses drawn
    again so that its MIWV does not rank the samples as scorer 1's does."""
    code_and_dolly(run)
    store = Catalog(run.catalog)
    add_links_and_scores(store, scorers=2)
    ids = np.array(sorted(ids_of(store, "SELECT sample_id FROM samples")), np.int64)
    one = pa.table({"sample_id": ids, "loss": np.random.default_rng(7).uniform(0.3, 3.0, len(ids))})
    with store.write() as conn, db.registered(conn, "_one", one):
        db.execute(
            conn,
            """UPDATE one_shot_loss o SET loss = n.loss, sum_nll = 10 * n.loss FROM _one n
               WHERE o.sample_id = n.sample_id AND o.scorer_id = 2;
               UPDATE score_current c SET one_shot_loss = n.loss, miwv = n.loss - c.zero_shot_loss FROM _one n
               WHERE c.sample_id = n.sample_id AND c.scorer_id = 2""",
        )


def add_response_losses(store: Catalog, scorer: int, seed: int = 3) -> list[int]:
    """Response-alone losses by SQL for every current sample under `scorer`, uniform in [0.5, 3.5]
    so that IFD falls on both sides of 1; the first sample's response is too long for the pass and
    the second's loss is 0 (IFD undefined for both). Returns the sample ids in order."""
    ids = np.array(sorted(ids_of(store, "SELECT sample_id FROM samples")), np.int64)
    loss = np.random.default_rng(seed).uniform(0.5, 3.5, len(ids))
    loss[1] = 0.0
    status = ["ok"] * len(ids)
    status[0] = "too_long"
    rows = pa.table({"sample_id": ids, "status": status, "loss": [None, *loss[1:]]})
    with store.write() as conn:
        run_id = db.next_id(conn, "score_run", "run_id")
        db.execute(
            conn,
            f"""INSERT INTO score_run (run_id, scorer_id, embedder_id, device, pool, samples, passes, tokens_run,
                                       started_at, finished_at, workers, metrics)
                VALUES ({run_id}, {scorer}, 1, 'cpu', 40, 40, 40, 900, now(), now(), 1, 'ifd')""",
        )
        with db.registered(conn, "_response", rows):
            db.execute(
                conn,
                f"""INSERT INTO response_loss
                    SELECT sample_id, {scorer}, status, 10 * loss, 10, loss, 11, {run_id}, now() FROM _response""",
            )
    return [int(i) for i in ids]


def expected_ifd(store: Catalog, scorer: int) -> dict:
    """The IFD section computed here from the loss tables (not the view): per dataset and over all."""
    with store.read() as conn:
        rows = db.records(
            conn,
            f"""SELECT z.sample_id, z.loss AS zero, r.loss AS response, d.dataset
                FROM zero_shot_loss z JOIN response_loss r USING (sample_id, scorer_id)
                     JOIN membership d USING (sample_id)
                WHERE z.scorer_id = {scorer} AND z.status = 'ok' AND r.status = 'ok' AND r.loss > 0""",
        )
    groups = {d: [r for r in rows if r["dataset"] == d] for d in sorted({r["dataset"] for r in rows})}
    figures = {}
    for name, group in [*groups.items(), (ALL, rows)]:
        zero = np.array([r["zero"] for r in group])
        response = np.array([r["response"] for r in group])
        ifd, ppl = zero / response, np.exp(zero - response)
        figures[name] = {
            "scored": len({r["sample_id"] for r in group}),
            "ifd_quartiles": np.quantile(ifd, [0.25, 0.5, 0.75]),
            "ifd_ppl_quartiles": np.quantile(ppl, [0.25, 0.5, 0.75]),
            "ifd_at_most_1": np.mean(ifd <= 1),
            "ifd_ppl_below_1": np.mean(ppl < 1),
            "l_response": response.mean(),
        }
    return figures


def expected_agreement(store: Catalog, scorer: int, percent: float = 5) -> dict:
    """MIWV (embedder 1) against IFD over the samples with both: scipy's Spearman, and the top-K overlap."""
    with store.read() as conn:
        rows = db.records(
            conn,
            f"""SELECT c.sample_id, c.miwv, z.loss / r.loss AS ifd
                FROM score_current c JOIN zero_shot_loss z USING (sample_id, scorer_id)
                     JOIN response_loss r USING (sample_id, scorer_id)
                WHERE c.scorer_id = {scorer} AND c.embedder_id = 1 AND c.status = 'ok'
                  AND r.status = 'ok' AND r.loss > 0 AND c.sample_id IN (SELECT sample_id FROM membership)""",
        )
    k = max(1, math.floor(len(rows) * percent / 100 + 0.5))

    def top(column: str) -> set[int]:
        return {r["sample_id"] for r in sorted(rows, key=lambda r: (-r[column], r["sample_id"]))[:k]}

    overlap = len(top("miwv") & top("ifd"))
    spearman = stats.spearmanr([r["miwv"] for r in rows], [r["ifd"] for r in rows]).statistic
    return {"samples": len(rows), "top_k": k, "top_overlap": overlap, "spearman": spearman}


def check_ifd_figures(summary: list[dict], expected: dict) -> None:
    """`summary` (rows of IFD_SUMMARY_SQL: per dataset, then ALL) against expected_ifd."""
    assert [r["dataset"] for r in summary] == list(expected)
    for row in summary:
        want = expected[row["dataset"]]
        assert row["scored"] == want["scored"]
        got = [row["ifd_p25"], row["ifd_median"], row["ifd_p75"]]
        assert got == pytest.approx(want["ifd_quartiles"], abs=1e-4)
        got = [row["ifd_ppl_p25"], row["ifd_ppl_median"], row["ifd_ppl_p75"]]
        assert got == pytest.approx(want["ifd_ppl_quartiles"], abs=1e-4)
        assert row["ifd_at_most_1"] == pytest.approx(want["ifd_at_most_1"], abs=1e-4)
        assert row["ifd_ppl_below_1"] == pytest.approx(want["ifd_ppl_below_1"], abs=1e-4)
        assert row["l_response"] == pytest.approx(want["l_response"], abs=1e-4)


def check_agreement(agreement: dict, expected: dict) -> None:
    assert agreement["samples"] == expected["samples"]
    assert agreement["top_k"] == expected["top_k"] and agreement["top_overlap"] == expected["top_overlap"]
    assert agreement["top_overlap_share"] == pytest.approx(expected["top_overlap"] / expected["top_k"], abs=1e-4)
    assert agreement["spearman"] == pytest.approx(expected["spearman"], abs=1e-4)


def test_report_shows_ifd_figures_equal_to_a_direct_computation(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(two_scorers)
    store = Catalog(catalog_dir)
    add_response_losses(store, scorer=1)
    report = write_report(store, 1, 1, "smollm2-135m", tmp_path / "report")
    expected = expected_ifd(store, 1)
    assert expected[ALL]["scored"] == 38  # 40 samples; one too long, one with a zero response loss
    assert 0 < expected[ALL]["ifd_at_most_1"] < 1  # both sides of 1: the filters matter
    check_ifd_figures(report.ifd["summary"], expected)
    agreement = expected_agreement(store, 1)
    assert agreement["samples"] == 38 and agreement["top_k"] == 2  # 5% of 38, rounded
    check_agreement(report.ifd["agreement"], agreement)
    assert report.ifd["agreement"]["top_percent"] == 5
    text = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert "## IFD and Superfiltering" in text and "Cherry LLM keeps" in text
    assert f"Spearman rank correlation {report.ifd['agreement']['spearman']}" in text
    assert "of MIWV's top 2 are also in IFD's top 2" in text


def test_a_scorer_without_response_losses_gets_the_report_it_always_got(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(two_scorers)
    store = Catalog(catalog_dir)
    before = write_report(store, 2, 1, "smollm2-135m", tmp_path / "before")
    text = (tmp_path / "before" / "summary.md").read_text(encoding="utf-8")
    add_response_losses(store, scorer=1)  # another scorer's response losses change nothing here
    after = write_report(store, 2, 1, "smollm2-135m", tmp_path / "after")
    assert before.ifd is None and after.ifd is None and after.summary == before.summary
    assert (tmp_path / "after" / "summary.md").read_text(encoding="utf-8") == text
    assert (
        [p.name for p in after.files]
        == [p.name for p in before.files]
        == [
            "summary.md",
            "miwv_histogram.png",
            "losses.png",
        ]
    )
    assert "IFD" not in text and text.startswith("# MIWV of smollm2-135m")


def test_agreement_is_absent_when_no_sample_has_both_scores(catalog_built_by, catalog_dir, tmp_path):
    catalog_built_by(two_scorers)
    store = Catalog(catalog_dir)
    add_response_losses(store, scorer=1)
    with store.write() as conn:  # as after a scorer's MIWV went stale everywhere: IFD stays, MIWV has no row
        db.execute(conn, "DELETE FROM score_current WHERE scorer_id = 1")
    report = write_report(store, 1, 1, "smollm2-135m", tmp_path / "report")
    assert report.ifd["agreement"] is None and report.ifd["summary"][-1]["scored"] == 38
    assert "No sample has both MIWV and IFD" in (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
