"""`select --strategy ifd|superfilter` on losses written by SQL (no model), and the one-line errors of
`score --metrics/--pool/--where/--calibrate`, refused before a model loads or anything is written."""

from __future__ import annotations

import math

import pytest

import miwv
from catalog import db
from catalog.score import TemplateKey, register_scorer
from catalog.store import Catalog
from tests.conftest import FIXTURE, CliRun
from tests.test_api_arguments import catalog_state

MODEL = "sql-written"

# (zero-shot status, zero-shot loss, response status, response loss) of the first samples by id; None: no row
LOSSES = [
    ("ok", 1.0, "ok", 1.0),  # IFD exactly 1: eligible for ifd (<= 1), not for superfilter (ifd_ppl = 1, not < 1)
    ("ok", 0.5, "ok", 1.0),  # IFD 0.5, ifd_ppl exp(-0.5) = 0.61
    ("ok", 0.9, "ok", 1.0),  # IFD 0.9, ifd_ppl 0.90
    ("ok", 2.0, "ok", 1.0),  # IFD 2: neither
    ("too_long", None, "ok", 1.0),
    ("ok", 1.0, "ok", 0.0),  # zero_response_loss
    ("ok", 1.0, None, None),  # no response pass yet: not scored
    ("ok", 0.2, "ok", 0.4),  # IFD 0.5 (ties the second on IFD), ifd_ppl exp(-0.2) = 0.82
]


def ingest_and_write_losses(cli_run: CliRun) -> None:
    """The 180 fixture rows, and zero-shot and response losses of one scorer written by SQL."""
    miwv.open(cli_run.catalog).ingest(FIXTURE, dataset="mixed")
    store = Catalog(cli_run.catalog)
    scorer = register_scorer(store, MODEL, "sql", "f" * 64, TemplateKey("alpaca", 2, "0" * 64), 512, "float32")
    with store.write() as conn:
        ids = [row[0] for row in db.execute(conn, f"SELECT sample_id FROM sample ORDER BY 1 LIMIT {len(LOSSES)}")]
        for sample_id, (z_status, z_loss, r_status, r_loss) in zip(ids, LOSSES, strict=True):
            for table, status, loss in (("zero_shot_loss", z_status, z_loss), ("response_loss", r_status, r_loss)):
                if status is None:
                    continue
                db.execute(
                    conn,
                    f"""INSERT INTO {table} (sample_id, scorer_id, status, sum_nll, n_response_tokens, loss, n_tokens,
                                             run_id, computed_at)
                        VALUES ($id, $scorer, $status, $sum, 4, $loss, 20, 1, now())""",
                    {
                        "id": sample_id,
                        "scorer": scorer.scorer_id,
                        "status": status,
                        "sum": None if loss is None else 4 * loss,
                        "loss": loss,
                    },
                )


@pytest.fixture
def run(catalog_built_by, catalog_dir) -> CliRun:
    catalog_built_by(ingest_and_write_losses)
    return CliRun(catalog_dir)


def first_ids(run: CliRun) -> list[int]:
    rows = run("sql", f"SELECT sample_id FROM sample ORDER BY 1 LIMIT {len(LOSSES)}", "--csv").output.split()
    return [int(x) for x in rows[1:]]


def test_ifd_keeps_ifd_at_most_1_highest_first_and_counts_what_it_leaves_out(run):
    ids = first_ids(run)
    result = run.json("select", "--model", MODEL, "--strategy", "ifd", "--top-k", "10")
    members = run.json(
        "sql",
        f"SELECT list(sample_id ORDER BY rank) AS ids FROM selection_member "
        f"WHERE selection_id = {result['selection_id']}",
    )["ids"]
    assert members == [ids[0], ids[2], ids[1], ids[7]]  # IFD 1, 0.9, then the 0.5 tie by sample_id
    assert (result["embedder"], result["eligible"], result["selected"], result["cascade"]) == (None, 4, 4, None)
    assert result["excluded"] == {"ifd above 1": 1, "too_long": 1, "zero_response_loss": 1, "not scored": 173}


def test_superfilter_keeps_ifd_ppl_below_1_by_the_perplexity_ratio(run):
    ids = first_ids(run)
    result = run.json("select", "--model", MODEL, "--strategy", "superfilter", "--top-k", "10")
    listed = run.json(
        "sql",
        f"SELECT list(sample_id ORDER BY rank) AS ids, list(score ORDER BY rank) AS scores "
        f"FROM selection_member WHERE selection_id = {result['selection_id']}",
    )
    assert listed["ids"] == [ids[2], ids[7], ids[1]]  # IFD exactly 1 is out; the 0.5 tie is broken by ifd_ppl
    assert listed["scores"] == pytest.approx([math.exp(-0.1), math.exp(-0.2), math.exp(-0.5)])
    assert result["excluded"] == {"ifd_ppl of 1 or more": 2, "too_long": 1, "zero_response_loss": 1, "not scored": 173}


def test_a_top_percent_is_of_the_pool_and_the_sql_reproduces_the_selection(run):
    result = run.json("select", "--model", MODEL, "--strategy", "ifd", "--top-percent", "1")  # 180 * 1% = 1.8 -> 2
    assert result["selected"] == 2
    reproduced = run.json("sql", f"SELECT list(sample_id) AS ids FROM ({result['sql']})")["ids"]
    members = run.json(
        "sql",
        f"SELECT list(sample_id ORDER BY rank) AS ids FROM selection_member "
        f"WHERE selection_id = {result['selection_id']}",
    )["ids"]
    assert reproduced == members


def test_the_human_line_counts_the_samples_left_out(run):
    output = run("select", "--model", MODEL, "--strategy", "superfilter", "--top-k", "2").output
    assert "eligible 3 (excluded: 2 ifd_ppl of 1 or more," in output and "selected 2" in output


CLI_ERRORS = [
    (("--metrics", "miwv,bogus"), "--metrics must be one or more of miwv, ifd (comma-separated) (got 'miwv,bogus')"),
    (("--metrics", ""), "--metrics must be one or more of miwv, ifd"),
    (("--pool", "7"), "--pool must be selection:ID, the id of a recorded selection"),
    (("--pool", "selection:"), "--pool must be selection:ID"),
    (("--pool", "selection:0"), "--pool must be selection:ID"),
    (("--pool", "selection:99"), "no selection 99; selections: 1 (random, 3 current members)"),
    (("--calibrate", "5"), "--calibrate needs --pool or --where (it measures what a screen kept)"),
    (("--pool", "selection:1", "--calibrate", "0"), "--calibrate must be a number above 0 and at most 100"),
    (("--where", "n_turns = 1", "--calibrate", "101"), "--calibrate must be a number above 0 and at most 100"),
    (("--where", "n_turns = 1) OR (true"), "--where is not one SQL condition on the `samples` view"),
    (("--where", "no_such_column = 1"), "--where is not one SQL condition on the `samples` view"),
    (("--pool", "selection:1", "--dataset", "nope"), "no dataset 'nope' in the catalog; datasets: mixed"),
    (("--pool", "selection:1", "--seed", "2147483648"), "--seed must be a whole number"),
]


@pytest.mark.parametrize(("args", "message"), CLI_ERRORS, ids=[" ".join(args) for args, _ in CLI_ERRORS])
def test_score_refuses_a_bad_screen_in_one_line_before_anything_is_written(run, tmp_path, args, message):
    run.json("select", "--strategy", "random", "--top-k", "3")
    before = catalog_state(tmp_path)
    result = run("score", "--model", "smollm2-135m", *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert catalog_state(tmp_path) == before


def test_a_screen_whose_members_all_left_is_refused(run):
    chosen = run.json("select", "--strategy", "random", "--top-k", "2")
    members = run.json(
        "sql", f"SELECT list(sample_id) AS ids FROM selection_member WHERE selection_id = {chosen['selection_id']}"
    )["ids"]
    assert run("remove", "--where", f"sample_id IN ({', '.join(map(str, members))})").exit_code == 0
    result = run("score", "--model", "smollm2-135m", "--pool", f"selection:{chosen['selection_id']}")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: selection {chosen['selection_id']} has no current member; "
        f"selections: {chosen['selection_id']} (random, 0 current members)\n"
    )
