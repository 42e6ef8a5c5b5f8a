"""Ingest through the CLI into real DuckDB catalogs: formats, dedup, all-or-nothing, resume."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog import Catalog, db
from catalog.records import to_sample
from tests.conftest import REPO, SHARED_DATA, fixture_records, write_jsonl
from tests.test_records import as_openai, as_sharegpt


def sample_ids(catalog_dir: Path) -> set[int]:
    with Catalog(catalog_dir).read() as conn:
        return {row[0] for row in db.execute(conn, "SELECT sample_id FROM samples")}


def table_counts(catalog_dir: Path) -> dict[str, int]:
    with Catalog(catalog_dir).read() as conn:
        return {
            t: db.execute(conn, f"SELECT count(*) FROM {t}")[0][0]
            for t in ("sample", "membership", "ingest_batch", "ingest_reject")
        }


def expected_ids(records: list[dict]) -> set[int]:
    return {to_sample(r, "alpaca").sample_id for r in records}


def write_format(path: Path, records: list[dict]) -> Path:
    """Write `records` in the format `path`'s name asks for."""
    name = path.name
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    elif name.endswith(".json"):
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    elif name.endswith(".parquet"):
        keys = sorted({k for r in records for k in r})  # from_pylist alone keeps only the first row's keys
        pq.write_table(pa.table({k: [r.get(k) for r in records] for k in keys}), path)
    elif name.endswith(".csv"):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=sorted({k for r in records for k in r}))
            writer.writeheader()
            writer.writerows(records)
    else:
        write_jsonl(path, records)
    return path


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz", "rows.json", "rows.parquet", "rows.csv"])
def test_every_file_format_ingests_the_same_samples(tmp_path, catalog_dir, cli_run, name):
    records = fixture_records()
    result = cli_run("ingest", write_format(tmp_path / name, records), "--dataset", "mix")
    assert result.exit_code == 0, result.output
    assert sample_ids(catalog_dir) == expected_ids(records)
    with Catalog(catalog_dir).read() as conn:
        categories = db.execute(conn, "SELECT count(extra->>'category') FROM samples")[0][0]
    assert categories == sum("category" in r for r in records)  # Dolly's extra field survives every format


def test_a_json_file_of_one_object_per_line_is_read_as_jsonl(tmp_path, catalog_dir, cli_run):
    records = fixture_records()[:20]
    assert cli_run("ingest", write_jsonl(tmp_path / "lines.json", records)).exit_code == 0
    assert sample_ids(catalog_dir) == expected_ids(records)


@pytest.mark.parametrize("shape", ["sharegpt", "openai"])
def test_chat_shapes_ingest_to_the_same_ids_as_alpaca(tmp_path, catalog_dir, cli_run, shape):
    records = fixture_records()[:40]
    convert = as_sharegpt if shape == "sharegpt" else as_openai
    result = cli_run("ingest", write_jsonl(tmp_path / "chat.jsonl", [convert(r) for r in records]), "--json")
    assert json.loads(result.output)["record_shape"] == shape
    assert sample_ids(catalog_dir) == expected_ids(records)
    with Catalog(catalog_dir).read() as conn:
        rows = db.execute(conn, "SELECT instruction, n_turns, response FROM samples")
    assert all(instruction is None and n_turns == 1 for instruction, n_turns, _ in rows)
    assert {response for *_, response in rows} == {r["output"] for r in records}


def test_same_content_from_two_files_is_one_sample_member_of_both_datasets(tmp_path, catalog_dir, cli_run):
    records = fixture_records()
    first, second = records[:120], records[80:]
    assert "120 new" in cli_run("ingest", write_jsonl(tmp_path / "a.jsonl", first), "--dataset", "a").output
    out = cli_run("ingest", write_format(tmp_path / "b.parquet", second), "--dataset", "b").output
    assert "60 new, 40 duplicates" in out
    assert sample_ids(catalog_dir) == expected_ids(records)
    with Catalog(catalog_dir).read() as conn:
        both = db.execute(conn, "SELECT count(*) FROM samples WHERE datasets = ['a', 'b']")[0][0]
    assert both == 40
    again = cli_run("ingest", tmp_path / "a.jsonl", "--dataset", "a", "--json")
    assert json.loads(again.output)["rows_new"] == 0
    assert table_counts(catalog_dir)["membership"] == 120 + 100


def test_real_shared_files_reingest_adds_nothing(catalog_dir, cli_run):
    path = SHARED_DATA / "dolly_3k_alpagasus.jsonl"
    first = json.loads(cli_run("ingest", path, "--dataset", "dolly", "--json").output)
    # Line 1724 repeats line 390's content with another category: one sample.
    assert (first["rows_read"], first["rows_new"], first["rows_duplicate"]) == (2995, 2994, 1)
    second = json.loads(cli_run("ingest", path, "--dataset", "dolly", "--json").output)
    assert (second["rows_new"], second["rows_duplicate"]) == (0, 2995)


BAD_LINES = {
    "invalid JSON": b'{"instruction": "x", "output": "y"',
    "missing required field 'output'": b'{"instruction": "Name a colour.", "input": ""}',
    "empty response": b'{"instruction": "Name a colour.", "input": "", "output": ""}',
    "not valid UTF-8": b'{"instruction": "Name a colour \xff", "input": "", "output": "Red."}',
    "field 'input' must be a string, got list": b'{"instruction": "Name a colour.", "input": ["a"], "output": "Red."}',
}


@pytest.mark.parametrize("problem", list(BAD_LINES))
def test_a_bad_row_refuses_the_whole_file_and_writes_nothing(tmp_path, catalog_dir, cli_run, problem):
    assert cli_run("ingest", write_jsonl(tmp_path / "good.jsonl", fixture_records()[:10])).exit_code == 0
    before = table_counts(catalog_dir)
    lines = [json.dumps(r).encode() for r in fixture_records()[10:30]]
    lines.insert(6, BAD_LINES[problem])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    result = cli_run("ingest", bad)
    assert result.exit_code == 2
    assert f"{bad}: line 7: " in result.output and problem in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert table_counts(catalog_dir) == before


def test_skip_invalid_ingests_the_rest_and_records_the_rejects(tmp_path, catalog_dir, cli_run):
    lines = [json.dumps(r).encode() for r in fixture_records()[:20]]
    lines.insert(3, BAD_LINES["empty response"])
    lines.insert(9, BAD_LINES["invalid JSON"])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines))
    result = cli_run("ingest", bad, "--skip-invalid", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["rows_rejected"] == 2
    assert sample_ids(catalog_dir) == expected_ids(fixture_records()[:20])
    rejects = json.loads(
        "["
        + ",".join(cli_run("sql", "SELECT line, reason FROM rejects ORDER BY line", "--json").output.splitlines())
        + "]"
    )
    assert [r["line"] for r in rejects] == [4, 10]
    assert "empty response" in rejects[0]["reason"] and "invalid JSON" in rejects[1]["reason"]


def test_file_level_problems_are_one_clear_error(tmp_path, catalog_dir, cli_run):
    cases = {
        tmp_path / "missing.jsonl": "no such file",
        write_jsonl(tmp_path / "empty.jsonl", []): "holds no records",
        (tmp_path / "notes.txt"): "unsupported file type .txt",
        write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "a", "completion": "b"}]): "cannot tell the record format",
    }
    (tmp_path / "notes.txt").write_text("hello")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": ')
    cases[broken] = "broken.json:2: invalid JSON"
    for path, message in cases.items():
        result = cli_run("ingest", path)
        assert result.exit_code == 2, path
        assert message in result.output
    assert not (catalog_dir / "catalog.duckdb").exists() or table_counts(catalog_dir)["sample"] == 0


def _started_until(command: list[str], env: dict, until) -> tuple[subprocess.Popen, float]:
    """Start `command` and poll (every millisecond) until `until(seconds since start)` holds, the process
    still running; returns the process and those seconds."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not until(time.monotonic() - started):
        assert process.poll() is None, "ingest finished before it could be killed"
        time.sleep(0.001)
    return process, time.monotonic() - started


@pytest.mark.slow  # a 50k-row ingest in a subprocess, killed, then rerun
def test_a_killed_ingest_leaves_nothing_and_a_rerun_completes(tmp_path, catalog_dir):
    """Kill `cli.py ingest` part-way through a large real file; the catalog must be as before.

    The kill points come from the catalog's files, not from guessed times: its write begins when
    DuckDB creates `catalog.duckdb.wal` (about 1.7 s before the commit here), and the read of the
    file is killed halfway to that moment as a timing run on a copy of the same catalog measured it.
    """
    base = [
        json.loads(line)
        for path in sorted(SHARED_DATA.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    big = [{**r, "output": f"{r['output']} [{i}]"} for i in range(4) for r in base if r["output"].strip()]
    path = write_jsonl(tmp_path / "big.jsonl", big)
    env = {**os.environ, "MIWV_CATALOG": str(catalog_dir)}
    command = [sys.executable, str(REPO / "cli.py"), "ingest", str(path), "--dataset", "big"]

    subprocess.run(
        [*command[:2], "ingest", str(write_jsonl(tmp_path / "seed.jsonl", fixture_records()[:5]))],
        env=env,
        check=True,
        capture_output=True,
    )
    seed = table_counts(catalog_dir)
    wal = catalog_dir / "catalog.duckdb.wal"
    assert not wal.exists()
    timing = shutil.copytree(catalog_dir, tmp_path / "timing")
    process, until_write = _started_until(
        command, {**env, "MIWV_CATALOG": str(timing)}, lambda _: (timing / "catalog.duckdb.wal").exists()
    )
    assert process.wait() == 0

    reading, writing = (lambda seconds: seconds >= until_write / 2), (lambda _: wal.exists())
    for until in (reading, writing):
        process, _ = _started_until(command, env, until)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert table_counts(catalog_dir) == seed

    subprocess.run(command, env=env, check=True, capture_output=True)
    counts = table_counts(catalog_dir)
    assert counts["sample"] == seed["sample"] + len(expected_ids(big))
    assert counts["ingest_batch"] == seed["ingest_batch"] + 1
