"""`select --out` never deletes what the tool did not write, numbers are checked before any
work, every extra field exports, and a selection and its file are kept both or neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from catalog.select import Request, select
from tests.conftest import fixture_records, write_jsonl


@pytest.fixture
def filled(catalog_built_by):
    catalog_built_by(ingest_30_rows_with_odd_extras)


def ingest_30_rows_with_odd_extras(cli_run) -> None:
    records = fixture_records()[:30]
    records[0] = {**records[0], "huge": 2**70, "mixed": 1}
    records[1] = {**records[1], "mixed": "one"}
    assert cli_run("ingest", write_jsonl(cli_run.catalog.parent / "a.jsonl", records), "--dataset", "a").exit_code == 0


def selections(cli_run) -> int:
    return json.loads(cli_run("sql", "SELECT count(*) AS n FROM selection", "--json").output)["n"]


def random_select(cli_run, *args):
    return cli_run("select", "--strategy", "random", "--top-k", "30", *args)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
@pytest.mark.parametrize("where", ["project", "cwd", "catalog", "hf-like", "parent-of-catalog"])
def test_an_existing_folder_is_never_deleted(filled, cli_run, catalog_dir, tmp_path, monkeypatch, fmt, where):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "work.py").write_text("precious")
    if where == "hf-like":
        (project / "dataset_info.json").write_text("{}")  # looks like a datasets folder, was not written by us
    monkeypatch.chdir(project)
    out = {"project": project, "cwd": ".", "catalog": catalog_dir, "hf-like": project, "parent-of-catalog": tmp_path}[
        where
    ]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = random_select(cli_run, "--out", out, "--format", fmt)
    assert result.exit_code == 1 and "--out" in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (project / "src" / "work.py").read_text() == "precious"
    assert selections(cli_run) == 0  # refused before the selection was recorded


@pytest.mark.parametrize("name", ["catalog.duckdb", "job.lock", "vectors/x.jsonl", "new.jsonl"])
def test_nothing_inside_the_catalog_is_overwritten(filled, cli_run, catalog_dir, name):
    target = catalog_dir / name
    existed = target.read_bytes() if target.is_file() else None
    result = random_select(cli_run, "--out", target, "--format", "jsonl")
    assert result.exit_code == 1 and "inside the catalog" in result.output
    assert (target.read_bytes() if target.is_file() else None) == existed


def test_a_folder_the_tool_wrote_is_replaced(filled, cli_run, tmp_path):
    out = tmp_path / "top_hf"
    assert random_select(cli_run, "--out", out).exit_code == 0
    assert (out / ".miwv-export").is_file()
    result = cli_run("select", "--strategy", "random", "--top-k", "5", "--out", out)
    assert result.exit_code == 0, result.output
    from datasets import load_from_disk

    assert len(load_from_disk(str(out))) == 5
    assert random_select(cli_run, "--out", out, "--format", "jsonl").exit_code == 0  # our folder, replaced by a file
    assert out.is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", str(2**31)], "--top-k must be a whole number"),
        (["--top-k", str(2**63)], "--top-k must be a whole number"),
        (["--top-percent", "nan"], "--top-percent must be a number"),
        (["--top-percent", "inf"], "--top-percent"),
        (["--top-percent", "-1"], "--top-percent"),
        (["--top-percent", "101"], "--top-percent"),
        (["--top-k", "3", "--seed", str(2**31)], "--seed must be a whole number"),
        (["--top-k", "3", "--seed", str(-(2**63))], "--seed must be a whole number"),
    ],
)
def test_numbers_out_of_range_are_refused_before_any_work(filled, cli_run, tmp_path, args, message):
    out = tmp_path / "top.jsonl"
    result = cli_run("select", "--strategy", "random", *args, "--out", out)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert not out.exists() and selections(cli_run) == 0


def test_the_library_checks_numbers_too(filled, catalog_dir):
    for request in (Request("random", top_percent=float("nan")), Request("random", top_k=2**40)):
        with pytest.raises(Exception, match="must be"):
            select(Catalog(catalog_dir), request)


@pytest.mark.parametrize("name", ["top.parquet", "top_hf", "top.jsonl"])
def test_extras_arrow_cannot_type_still_export(filled, cli_run, tmp_path, name):
    out = tmp_path / name
    result = random_select(cli_run, "--out", out)
    assert result.exit_code == 0, result.output
    if name.endswith(".jsonl"):
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert {r.get("huge") for r in rows} == {2**70, None}
    else:
        if name.endswith(".parquet"):
            rows = pq.read_table(out).to_pylist()
        else:
            from datasets import load_from_disk

            rows = list(load_from_disk(str(out)))
        assert {r["huge"] for r in rows} == {str(2**70), None}
        assert {r["mixed"] for r in rows} == {"1", "one", None}


@pytest.mark.slow
def test_when_the_selection_cannot_be_recorded_no_file_is_written(filled, cli_run, catalog_dir, tmp_path):
    out = tmp_path / "top.jsonl"
    out.write_text("the previous selection\n")
    with Catalog(catalog_dir).write() as conn:  # an empty write-ahead log: the selection's commit starts it
        conn.exec_driver_sql("CHECKPOINT")
    script = f"""
import resource, signal, sys
sys.argv = ["cli.py", "--catalog", {str(catalog_dir)!r}, "select", "--strategy", "random", "--top-k", "1",
            "--where", "length(user_text) + length(response) < 200", "--out", {str(out)!r}]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (800, 800))  # a short sample's export fits, the commit's log does not
from cli import main
main()
"""
    Path(tmp_path / "run.py").write_text(script)
    child = subprocess.run(
        [sys.executable, str(tmp_path / "run.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert child.returncode == 4, child.stderr
    assert len(child.stderr.strip().splitlines()) == 1 and "free disk space" in child.stderr
    assert out.read_text() == "the previous selection\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["catalog", "run.py", "top.jsonl"])
    assert selections(cli_run) == 0


def test_an_export_that_fails_leaves_no_file_and_no_record(filled, cli_run, tmp_path, monkeypatch):
    out = tmp_path / "top.parquet"

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out))

    monkeypatch.setattr(pq, "write_table", full)
    result = random_select(cli_run, "--out", out)
    assert result.exit_code == 4 and "No space left on device" in result.output and "free disk space" in result.output
    assert not out.exists() and selections(cli_run) == 0


def test_stale_staging_of_a_killed_export_is_removed(filled, cli_run, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".miwv-staging-{dead.stdout.strip()}-abcd1234-top.jsonl"
    (stale / "staging").mkdir(parents=True)
    live = tmp_path / f".miwv-staging-{os.getpid()}-abcd1234-top.jsonl"  # an export running now
    live.mkdir()
    theirs = tmp_path / ".top.jsonl.abcd1234"  # not a name of ours
    theirs.mkdir()
    assert random_select(cli_run, "--out", tmp_path / "top.jsonl").exit_code == 0
    assert not stale.exists() and live.exists() and theirs.exists()
