"""`sql` is read-only and scriptable; `status` summarises; a busy catalog gives a clear message."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, CliRun, fixture_records, write_jsonl


@pytest.fixture
def filled(catalog_built_by):
    catalog_built_by(ingest_a_and_an_overlapping_b)
    return fixture_records()


def ingest_a_and_an_overlapping_b(cli_run) -> None:
    records = fixture_records()
    cli_run("ingest", write_jsonl(cli_run.catalog.parent / "a.jsonl", records[:100]), "--dataset", "a")
    cli_run("ingest", write_jsonl(cli_run.catalog.parent / "b.jsonl", records[50:]), "--dataset", "b")


def test_sql_outputs_table_csv_and_json(filled, cli_run):
    query = "SELECT list_contains(datasets, 'b') AS in_b, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1"
    table = cli_run("sql", query)
    assert table.exit_code == 0 and "in_b" in table.output and "2 rows" in table.output
    rows = list(csv.DictReader(io.StringIO(cli_run("sql", query, "--csv").output)))
    assert rows == [{"in_b": "False", "n": "50"}, {"in_b": "True", "n": "130"}]
    lines = [json.loads(line) for line in cli_run("sql", query, "--json").output.splitlines()]
    assert lines == [{"in_b": False, "n": 50}, {"in_b": True, "n": 130}]


def test_samples_view_has_the_documented_columns(filled, cli_run):
    out = cli_run("sql", "SELECT * FROM samples LIMIT 1", "--json").output
    assert list(json.loads(out)) == [
        "sample_id",
        "datasets",
        "instruction",
        "input",
        "output",
        "messages",
        "user_text",
        "response",
        "n_turns",
        "extra",
        "created_at",
        "ingest_id",
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("DELETE FROM sample", "DELETE statements are refused"),
        ("INSERT INTO membership VALUES (1, 'x', 1, 1)", "INSERT statements are refused"),
        ("COPY sample TO 'out.csv'", "COPY statements are refused"),
        ("CREATE TABLE x (a INT)", "CREATE statements are refused"),
        ("SELECT 1; DROP VIEW samples", "exactly one SQL statement"),
        ("SELEC 1", "cannot parse the query"),
        ("SELECT nope FROM samples", "query failed"),
    ],
)
def test_sql_refuses_writes_and_reports_bad_queries(filled, cli_run, query, message):
    result = cli_run("sql", query)
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output
    assert json.loads(cli_run("sql", "SELECT count(*) AS n FROM samples", "--json").output)["n"] == 180


def test_status_counts_datasets_and_batches(filled, cli_run):
    status = cli_run.json("status")
    assert status["samples"] == 180
    assert status["datasets"] == [
        {"dataset": "a", "samples": 100, "only_here": 50, "version": 1},
        {"dataset": "b", "samples": 130, "only_here": 80, "version": 1},
    ]
    assert [(b["rows_new"], b["rows_duplicate"]) for b in status["ingests"]] == [(100, 0), (80, 50)]
    human = cli_run("status").output
    assert "180 samples" in human and "ingest batches" in human


def test_commands_on_a_missing_catalog_say_where_they_looked(cli_run, catalog_dir):
    for args in (["status"], ["sql", "SELECT 1"]):
        result = cli_run(*args)
        assert result.exit_code == 1 and f"no catalog at {catalog_dir}" in result.output


def test_catalog_may_follow_the_command_name(filled, tmp_path, catalog_dir):
    """`status --catalog X` (and `serve --port 9000 --catalog X`) as well as `--catalog X status`;
    after the name it wins over the one before it."""
    elsewhere = CliRun(tmp_path / "nothing-here")
    result = elsewhere("status", "--json", "--catalog", str(catalog_dir))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 180
    assert elsewhere("status").exit_code == 1  # without it, the one before the name
    query = elsewhere("sql", "SELECT count(*) AS n FROM samples", "--json", "--catalog", str(catalog_dir))
    assert json.loads(query.stdout) == {"n": 180}


def test_catalog_source_package_is_refused_as_a_catalog_dir():
    result = CliRun(REPO / "catalog")("status")
    assert result.exit_code == 1 and "source package" in result.output


HOLD_WRITE_LOCK = """
import sys, time
from catalog import Catalog
with Catalog(sys.argv[1]).write():
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow
def test_a_busy_catalog_is_retried_then_reported(filled, catalog_dir, monkeypatch, cli_run):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(catalog_dir), "2.5"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    monkeypatch.setenv("MIWV_BUSY_TIMEOUT", "0.5")
    busy = cli_run("status")
    assert busy.exit_code == 3
    assert f"catalog {catalog_dir} is busy: process {holder.pid}" in busy.output
    monkeypatch.setenv("MIWV_BUSY_TIMEOUT", "20")
    started = time.monotonic()
    waited = cli_run("sql", "SELECT count(*) FROM samples", "--csv")
    assert waited.exit_code == 0 and "180" in waited.output
    assert time.monotonic() - started > 0.5  # it waited for the holder, then got in
    holder.wait()


HOLD_JOB = """
import sys, time
from catalog import Catalog
with Catalog(sys.argv[1]).job("score"):
    print("running", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow
def test_two_long_jobs_never_run_on_one_catalog(filled, catalog_dir, cli_run):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_JOB, str(catalog_dir), "120"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )  # held far longer than the test needs on a loaded machine; ended below
    assert holder.stdout.readline().strip() == "running"
    busy = cli_run("embed")
    assert busy.exit_code == 3
    assert f"catalog {catalog_dir} is busy: `score` (pid {holder.pid}) is running on it" in busy.output
    assert json.loads(cli_run("status", "--json").output)["samples"] == 180  # readers are not blocked
    holder.terminate()
    holder.wait()
