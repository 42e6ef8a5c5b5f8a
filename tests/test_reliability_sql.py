"""`sql` can touch no file but the catalog, stops on --timeout and Ctrl-C, and reads never change
a database that is not ours or not at our schema revision."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from catalog import Catalog, db, migrate
from tests.conftest import REPO, fixture_records, write_jsonl


def ingest_40_rows(cli_run) -> None:
    cli_run("ingest", write_jsonl(cli_run.catalog.parent / "a.jsonl", fixture_records()[:40]), "--dataset", "a")


@pytest.fixture
def filled(catalog_built_by):
    catalog_built_by(ingest_40_rows)


def tree_digest(*folders: Path) -> dict[str, str]:
    """Every file under `folders` with the SHA-256 of its bytes."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# Every way DuckDB has to write (or read) a file, or change its own settings, hidden or not.
ESCAPES = [
    "WITH x AS (COPY sample TO '{out}/cte.csv') SELECT 1",
    "EXPLAIN ANALYZE COPY sample TO '{out}/explain.csv'",
    "COPY (SELECT * FROM samples) TO '{out}/copy.parquet'",
    "ATTACH '{out}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD '{out}/evil.duckdb_extension'",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling = 'json'",
    "CALL pragma_version()",
    "EXPORT DATABASE '{out}/export'",
    "WITH t AS (CREATE TABLE z AS SELECT 1) SELECT * FROM t",
    "SELECT * FROM (CREATE TABLE z AS SELECT 1)",
    "CREATE TABLE z AS SELECT 1",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('{catalog}/catalog.duckdb')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT nextval('nope')",
]


@pytest.mark.parametrize("query", ESCAPES)
def test_sql_can_touch_no_file(filled, cli_run, catalog_dir, tmp_path, query):
    out = tmp_path / "written"
    out.mkdir()
    before = tree_digest(catalog_dir)
    result = cli_run("sql", query.format(out=out, catalog=catalog_dir))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(out.iterdir()) == [] and tree_digest(catalog_dir) == before


@pytest.mark.parametrize(
    "statement",
    [
        "COPY sample TO '{out}/direct.csv'",
        "WITH x AS (COPY sample TO '{out}/direct.csv') SELECT 1",
        "ATTACH '{out}/direct.duckdb'",
        "SET enable_external_access = true",
        "SELECT * FROM read_csv('/etc/passwd')",
    ],
)
def test_the_read_connection_itself_is_the_sandbox(filled, catalog_dir, tmp_path, statement):
    """Without the statement-type check, the connection still refuses (the web page uses it too)."""
    with Catalog(catalog_dir).read() as conn:
        with pytest.raises(duckdb.Error):
            db.execute(conn, statement.format(out=tmp_path))
    assert list(tmp_path.glob("direct*")) == []


def test_pivot_is_read_only_and_allowed(filled, cli_run):
    result = cli_run("sql", "PIVOT (SELECT n_turns, len(datasets) AS d FROM samples) ON d USING count(*)", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0]) == {"n_turns": 1, "1": 40}


def test_every_view_works_in_the_sandbox(filled, cli_run):
    for view in ("samples", "rejects", "neighbours", "miwv_scores", "selection", "selection_member"):
        result = cli_run("sql", f"SELECT count(*) AS n FROM {view}", "--json")
        assert result.exit_code == 0, (view, result.output)


def test_select_where_runs_in_the_sandbox(filled, cli_run, tmp_path):
    result = cli_run(
        "select", "--strategy", "random", "--top-k", "3", "--where", "sample_id NOT IN (SELECT 1 FROM glob('/etc/*'))"
    )
    assert result.exit_code == 1 and "--where" in result.output and "sql` reads only the catalog" in result.output


SLOW = "SELECT max(hash(a)) FROM range(1000000000000) t(a)"  # minutes of work


def test_sql_timeout_stops_the_query(filled, cli_run):
    started = time.monotonic()
    result = cli_run("sql", SLOW, "--timeout", "0.5")
    assert result.exit_code == 1 and "query stopped after 0.5 s (--timeout)" in result.output
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e10"])
def test_a_timeout_out_of_range_is_one_line(filled, cli_run, timeout):
    result = cli_run("sql", "SELECT 1", "--timeout", timeout)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "--timeout must be a positive number of seconds, at most 604800" in result.output


@pytest.mark.slow
def test_ctrl_c_stops_a_slow_query_at_once(filled, catalog_dir):
    query = subprocess.Popen(
        [sys.executable, "cli.py", "--catalog", str(catalog_dir), "sql", SLOW],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, even under a runner
    )
    try:
        db_file = os.path.realpath(catalog_dir / "catalog.duckdb")
        while db_file not in open_files(query.pid):
            time.sleep(0.01)  # imports, then the catalog opens
            assert query.poll() is None, "sql ended before it opened the catalog"
        time.sleep(1)  # the query runs
        os.kill(query.pid, signal.SIGINT)
        sent = time.monotonic()
        _, err = query.communicate(timeout=30)
    finally:
        query.kill()  # a query that ignored the signal would run on for minutes
    assert time.monotonic() - sent < 3
    assert query.returncode == 130 and len(err.strip().splitlines()) == 1 and "Interrupted" in err, err


# Runs BODY on a catalog connection (argv[2]: write or read) and reports how Ctrl-C ended it.
ON_A_CATALOG_CONNECTION = """
import os, signal, sys, time
from catalog import Catalog, db
try:
    with getattr(Catalog(sys.argv[1]), sys.argv[2])() as conn:
BODY
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


def on_a_catalog_connection(body: str, catalog_dir: Path, mode: str) -> subprocess.Popen:
    """A Python process running `body` on a `mode` connection (`conn`), with SIGINT at its default."""
    script = ON_A_CATALOG_CONNECTION.replace("BODY", textwrap.indent(textwrap.dedent(body).strip(), " " * 8))
    return subprocess.Popen(
        [sys.executable, "-c", script, str(catalog_dir), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, even under a runner
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["write", "read"])
def test_ctrl_c_during_any_catalog_statement_is_an_interrupt(filled, catalog_dir, mode):
    """DuckDB answers a SIGINT it sees mid-statement with a RuntimeError; every catalog connection
    (a score job's commit, a report's query) turns it back into Ctrl-C, so the CLI says "Interrupted"."""
    body = f"""
        print("running", flush=True)
        db.execute(conn, "{SLOW}")
    """
    process = on_a_catalog_connection(body, catalog_dir, mode)
    try:
        assert process.stdout.readline().strip() == "running"
        time.sleep(0.5)  # the statement runs
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()  # a statement that ignored the signal would run on for minutes
    assert (out.strip(), process.returncode) == ("KeyboardInterrupt", 0), err


# Ctrl-C while a connection is open, then a failing statement: in CI, the watcher's interrupt came
# late and stopped the transaction's rollback, which sqlalchemy raised as a DatabaseError.
CTRL_C_THEN_AN_ERROR = """
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
except KeyboardInterrupt:
    db.execute(conn, "SELECT * FROM no_such_table")
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["write", "read"])
def test_whatever_a_connection_raises_after_ctrl_c_is_the_ctrl_c(filled, catalog_dir, mode):
    process = on_a_catalog_connection(CTRL_C_THEN_AN_ERROR, catalog_dir, mode)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert (out.strip(), process.returncode) == ("KeyboardInterrupt", 0), err


def test_reads_never_touch_a_foreign_database(tmp_path, cli_run, catalog_dir):
    catalog_dir.mkdir()
    theirs = duckdb.connect(str(catalog_dir / "catalog.duckdb"))
    theirs.execute("CREATE TABLE invoices AS SELECT range AS id FROM range(5)")
    theirs.close()
    before = tree_digest(catalog_dir)
    for args in (
        ["status"],
        ["sql", "SELECT * FROM invoices"],
        ["ingest", write_jsonl(tmp_path / "a.jsonl", fixture_records()[:3])],
    ):
        result = cli_run(*args)
        assert result.exit_code == 1 and "is not a miwv catalog (it holds invoices" in result.output, result.output
        assert tree_digest(catalog_dir) == before


def test_reads_of_an_old_catalog_ask_for_upgrade_and_change_nothing(tmp_path, cli_run, catalog_dir):
    catalog_dir.mkdir()
    with db.connect(catalog_dir / "catalog.duckdb", read_only=False, busy_timeout=1) as conn:
        migrate.upgrade(conn, "0001")
    before = tree_digest(catalog_dir)
    for args in (["status"], ["sql", "SELECT count(*) FROM samples"], ["selections"], ["serve", "--port", "1"]):
        result = cli_run(*args)
        assert result.exit_code == 1 and "at schema revision 0001" in result.output and "upgrade" in result.output
        assert tree_digest(catalog_dir) == before
    assert cli_run("upgrade").exit_code == 0
    assert cli_run("status").exit_code == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "a folder"])
def test_a_damaged_catalog_file_is_one_line(filled, cli_run, catalog_dir, damage):
    path = catalog_dir / "catalog.duckdb"
    if damage == "garbage":
        path.write_bytes(b"not a database" * 1000)
    elif damage == "truncated":
        os.truncate(path, 5000)
    else:
        path.unlink()
        path.mkdir()
    for args in (
        ["status"],
        ["sql", "SELECT 1"],
        ["ingest", write_jsonl(catalog_dir.parent / "b.jsonl", fixture_records()[:3])],
    ):
        result = cli_run(*args)
        assert result.exit_code == 4 and f"catalog file {path}" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["abc", "-1", "nan", ""])
def test_a_bad_busy_timeout_is_one_line_naming_the_variable(filled, cli_run, monkeypatch, value):
    monkeypatch.setenv("MIWV_BUSY_TIMEOUT", value)
    result = cli_run("status")
    assert result.exit_code == 1 and f"MIWV_BUSY_TIMEOUT={value!r} is not a number" in result.output
    assert cli_run("models").exit_code == 0  # a command that needs no catalog still works


def open_files(pid: int) -> set[str]:
    """The files process `pid` has open now (an fd may close while they are listed)."""
    names = set()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        try:
            names.add(os.path.realpath(os.readlink(fd.path)))
        except OSError:
            continue
    return names
