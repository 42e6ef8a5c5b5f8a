"""Inputs that used to crash or mislead ingest (issue 8): lone surrogates, deep nesting, BOMs,
invalid first rows, message wording, and a write that fails at commit (disk full)."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from catalog import Catalog, db
from catalog.ingest import ingest_rows
from tests.conftest import REPO, SHARED_DATA, fixture_records, write_jsonl
from tests.test_ingest import expected_ids, sample_ids, table_counts, write_format


def rejects(catalog_dir: Path) -> list[dict]:
    with Catalog(catalog_dir).read() as conn:
        return db.records(conn, "SELECT line, reason, raw FROM rejects ORDER BY line")


def with_bad_line(path: Path, bad: str, at: int = 3) -> tuple[Path, list[dict]]:
    """Six real rows as JSONL with `bad` (one line of text) as line `at`; returns the path and the good rows."""
    good = fixture_records()[100:106]
    lines = [json.dumps(r, ensure_ascii=False) for r in good]
    lines.insert(at - 1, bad)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, good


# Every place a lone surrogate can reach storage: message text, a field name, extras at any depth.
SURROGATE_PLACES = {
    "instruction": lambda r, s: {**r, "instruction": r["instruction"] + s},
    "input": lambda r, s: {**r, "input": s + "x"},
    "output": lambda r, s: {**r, "output": s},
    "key": lambda r, s: {**r, f"note{s}": "x"},
    "extra nested": lambda r, s: {**r, "meta": {"tags": ["ok", {"deep": [s]}]}},
    "history": lambda r, s: {**r, "history": [["Hi", f"Hello {s}"]]},
    "system": lambda r, s: {**r, "system": f"Be {s} brief."},
}


@pytest.mark.parametrize("surrogate", ["\ud800", "\udbff", "\udc00", "\udfff"])
@pytest.mark.parametrize("place", list(SURROGATE_PLACES))
def test_a_lone_surrogate_anywhere_is_a_row_error_and_its_raw_text_is_stored_escaped(
    tmp_path, catalog_dir, cli_run, place, surrogate
):
    record = SURROGATE_PLACES[place](fixture_records()[0], surrogate)
    line = json.dumps(record)  # ensure_ascii writes the lone surrogate as a \u escape, as real dumps do
    path, good = with_bad_line(tmp_path / "rows.jsonl", line)

    refused = cli_run("ingest", path)
    assert refused.exit_code == 2
    assert f"{path}: line 3: " in refused.output and "lone surrogate" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert not (catalog_dir / "catalog.duckdb").exists() or table_counts(catalog_dir)["sample"] == 0

    skipped = cli_run("ingest", path, "--skip-invalid", "--json")
    assert json.loads(skipped.output)["rows_rejected"] == 1
    assert sample_ids(catalog_dir) == expected_ids(good)
    [reject] = rejects(catalog_dir)
    assert reject["line"] == 3 and "lone surrogate" in reject["reason"]
    assert json.loads(reject["raw"]) == record  # the escaped text reads back as the row itself


def test_lone_surrogates_in_a_sharegpt_turn_and_in_rows_given_in_memory(tmp_path, catalog_dir, cli_run):
    good = fixture_records()[:4]
    chat = [
        {"conversations": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]}
        for r in good
    ]
    chat[1]["conversations"][1]["value"] += "\udfff"
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in chat))  # the surrogate as a \u escape
    refused = cli_run("ingest", path)
    assert refused.exit_code == 2
    assert "line 2: field 'conversations'[1]['value'] holds a lone surrogate \\udfff" in refused.output

    rows = [*good, {**good[0], "instruction": "\ud800" + good[0]["instruction"]}]
    result = ingest_rows(Catalog(catalog_dir), rows, "mem", skip_invalid=True)
    assert (result.rows_new, result.rows_rejected) == (4, 1)
    [reject] = rejects(catalog_dir)
    assert reject["line"] == 5 and json.loads(reject["raw"]) == rows[4]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deep_nesting_in_jsonl_is_a_row_error_with_its_line(tmp_path, catalog_dir, cli_run, depth):
    as_field = json.dumps(fixture_records()[0])[:-1] + f', "meta": {nested(depth)}}}'
    for bad in (as_field, nested(depth)):  # deep inside a record, and the row itself
        path, good = with_bad_line(tmp_path / "deep.jsonl", bad, at=2)
        refused = cli_run("ingest", path)
        assert refused.exit_code == 2 and f"{path}: line 2: JSON nested too deeply" in refused.output
        assert len(refused.output.strip().splitlines()) == 1
    skipped = json.loads(cli_run("ingest", path, "--skip-invalid", "--json").output)
    assert (skipped["rows_new"], skipped["rows_rejected"]) == (6, 1)
    assert [r["line"] for r in rejects(catalog_dir)] == [2]


def test_deep_nesting_at_every_depth_around_the_limit_never_crashes(tmp_path, catalog_dir, cli_run):
    record = json.dumps(fixture_records()[0])[:-1]
    lines = [f'{record}, "meta{depth}": {nested(depth)}}}' for depth in (500, 900, 980, 995, 1000, 1010, 1100, 3000)]
    path = tmp_path / "depths.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = json.loads(cli_run("ingest", path, "--skip-invalid", "--json").output)
    assert result["rows_new"] + result["rows_duplicate"] + result["rows_rejected"] == len(lines)
    assert result["rows_rejected"] >= 2  # 3000 levels never parse
    assert all("nested too deeply" in r["reason"] for r in rejects(catalog_dir))


def test_deep_nesting_in_a_json_array_skips_that_record_and_reads_the_rest(tmp_path, catalog_dir, cli_run):
    good = fixture_records()[:5]
    elements = [json.dumps(r, indent=1) for r in good]
    elements.insert(2, json.dumps(fixture_records()[7])[:-1] + f', "meta": {nested(5000)}}}')
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join(elements) + "\n]\n")
    line = 2 + sum(e.count("\n") + 1 for e in elements[:2])

    refused = cli_run("ingest", path)
    assert refused.exit_code == 2
    assert f"{path}: record 3 (line {line}): JSON nested too deeply" in refused.output

    skipped = json.loads(cli_run("ingest", path, "--skip-invalid", "--json").output)
    assert (skipped["rows_new"], skipped["rows_rejected"]) == (5, 1)
    assert sample_ids(catalog_dir) == expected_ids(good)
    assert [r["line"] for r in rejects(catalog_dir)] == [3]


def test_deep_nesting_in_rows_given_in_memory_is_a_row_error(catalog_dir):
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    rows = [*fixture_records()[:3], {**fixture_records()[3], "meta": deep}]
    result = ingest_rows(Catalog(catalog_dir), rows, "mem", skip_invalid=True)
    assert (result.rows_new, result.rows_rejected) == (3, 1)
    assert "nested too deeply" in rejects(catalog_dir)[0]["reason"]


@pytest.mark.parametrize("name", ["lines.json", "array.json", "rows.jsonl", "rows.jsonl.gz", "rows.csv"])
def test_a_utf8_bom_is_accepted_in_every_text_format(tmp_path, catalog_dir, cli_run, name):
    records = fixture_records()[40:70]
    plain = tmp_path / ("plain-" + name)
    write_jsonl(plain, records) if name == "lines.json" else write_format(plain, records)
    data = plain.read_bytes()
    if name.endswith(".gz"):
        data = gzip.compress(codecs.BOM_UTF8 + gzip.decompress(data))
    else:
        data = codecs.BOM_UTF8 + data
    path = tmp_path / name
    path.write_bytes(data)
    result = cli_run("ingest", path)
    assert result.exit_code == 0, result.output
    assert sample_ids(catalog_dir) == expected_ids(records)


FIRST_ROW_PROBLEMS = {
    "invalid JSON": '{"instruction": "Name a colour.", "output": "Red."',
    "not valid UTF-8": None,  # written as bytes below
    "missing required field 'output'": '{"instruction": "Name a colour.", "input": ""}',
    "empty response": '{"instruction": "Name a colour.", "input": "", "output": " "}',
    "JSON nested too deeply": nested(5000),
}


@pytest.mark.parametrize("problem", list(FIRST_ROW_PROBLEMS))
def test_an_invalid_first_or_only_row_reports_its_own_problem(tmp_path, catalog_dir, cli_run, problem):
    bad = (FIRST_ROW_PROBLEMS[problem] or '{"instruction": "x \udcff"}').encode("utf-8", "surrogateescape")
    only = tmp_path / "only.jsonl"
    only.write_bytes(bad + b"\n")
    result = cli_run("ingest", only)
    assert result.exit_code == 2
    assert f"{only}: line 1: {problem}" in result.output and "cannot tell" not in result.output

    good = fixture_records()[:8]
    first = tmp_path / "first.jsonl"
    first.write_bytes(bad + b"\n" + bad + b"\n" + "".join(json.dumps(r) + "\n" for r in good).encode())
    refused = cli_run("ingest", first)
    assert f"{first}: line 1: {problem}" in refused.output and "1 more invalid line" in refused.output
    skipped = json.loads(cli_run("ingest", first, "--skip-invalid", "--json").output)
    assert (skipped["record_shape"], skipped["rows_new"], skipped["rows_rejected"]) == ("alpaca", 8, 2)


# One line for each of the messages Python's JSON decoder gives.
BAD_JSON = [
    '{"instruction": "a\x01b", "output": "c"}',
    '{"instruction": "a',
    '{"instruction": "a\\qb", "output": "c"}',
    '{"instruction": "a\\u12", "output": "c"}',
    '{"instruction" "a", "output": "c"}',
    '{"instruction": "a", "output": "c",}',
    '{"instruction": "a", "output": "c"} x',
    '{"instruction": tru, "output": "c"}',
    '{"instruction": "a" "output": "c"}',
]


def test_invalid_json_messages_read_once_with_their_column(tmp_path, cli_run):
    for number, bad in enumerate(BAD_JSON):
        path, _ = with_bad_line(tmp_path / f"bad{number}.jsonl", bad)
        result = cli_run("ingest", path)
        assert result.exit_code == 2
        assert f"{path}: line 3: invalid JSON (" in result.output and " at column " in result.output
        assert " at at " not in result.output, result.output


def test_csv_rows_are_named_by_the_file_line_they_start_on(tmp_path, catalog_dir, cli_run):
    records = [r for r in fixture_records() if "\n" in r["output"]][:4] + fixture_records()[:3]
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["instruction", "input", "output"])
    rows = [[r["instruction"], r["input"], r["output"]] for r in records]
    rows.insert(5, ["Name a colour.", "", "Red.", "an extra cell"])
    rows.insert(2, ["Name a colour.", "", ""])
    writer.writerows(rows)
    text = handle.getvalue()
    path = tmp_path / "multi.csv"
    path.write_text(text, encoding="utf-8", newline="")
    starts = [
        1 + text[: text.index(line_text)].count("\n") for line_text in ("Name a colour.,,\r", "Name a colour.,,Red.")
    ]
    assert starts[0] > 3  # the multi-line cells push the file lines past the record numbers

    refused = cli_run("ingest", path)
    assert refused.exit_code == 2
    assert f"{path}: line {starts[0]}: missing required field 'output'" in refused.output
    skipped = json.loads(cli_run("ingest", path, "--skip-invalid", "--json").output)
    assert (skipped["rows_new"], skipped["rows_rejected"]) == (len(expected_ids(records)), 2)
    assert [r["line"] for r in rejects(catalog_dir)] == starts


LIMITED_INGEST = """
import resource, signal, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
from cli import cli
cli(sys.argv[2:])
"""


@pytest.mark.slow
def test_a_write_that_fails_at_commit_is_one_line_and_leaves_the_catalog_as_it_was(tmp_path, catalog_dir, cli_run):
    assert cli_run("ingest", write_jsonl(tmp_path / "seed.jsonl", fixture_records())).exit_code == 0
    before = table_counts(catalog_dir)
    with Catalog(catalog_dir).read() as conn:
        before_ids = {row[0] for row in db.execute(conn, "SELECT sample_id FROM sample")}
    limit = (catalog_dir / "catalog.duckdb").stat().st_size  # the database may not grow, nor its log pass this size
    big = tmp_path / "all.jsonl"
    big.write_bytes(b"".join(path.read_bytes() for path in sorted(SHARED_DATA.glob("*.jsonl"))))
    assert big.stat().st_size > 2 * limit
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-c",
        LIMITED_INGEST,
        str(limit),
        "--catalog",
        str(catalog_dir),
        "ingest",
        str(big),
        "--skip-invalid",
    ]
    failed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)

    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    message = failed.stderr.strip().splitlines()[-1]  # after the progress bar
    assert message.startswith(f"Error: catalog file {catalog_dir / 'catalog.duckdb'}:")
    assert "File too large" in message and "free disk space" in message and "nothing of this step was kept" in message
    assert table_counts(catalog_dir) == before
    with Catalog(catalog_dir).read() as conn:
        assert {row[0] for row in db.execute(conn, "SELECT sample_id FROM sample")} == before_ids
    assert cli_run("ingest", big, "--skip-invalid").exit_code == 0  # with room again, the same ingest goes through

    fresh = tmp_path / "fresh"  # a first ingest that cannot be written leaves an empty catalog, never half of one
    command[command.index(str(catalog_dir))] = str(fresh)
    failed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"Error: catalog file {fresh / 'catalog.duckdb'}:")
    assert table_counts(fresh) == {"sample": 0, "membership": 0, "ingest_batch": 0, "ingest_reject": 0}


def test_a_csv_cell_longer_than_the_csv_module_default_is_read(tmp_path, catalog_dir, cli_run):
    records = fixture_records()[:3]
    records[1] = {**records[1], "output": " ".join(r["output"] for r in fixture_records()) * 20}
    assert len(records[1]["output"]) > 131_072  # the csv module's default cell limit
    result = cli_run("ingest", write_format(tmp_path / "long.csv", records))
    assert result.exit_code == 0, result.output
    assert sample_ids(catalog_dir) == expected_ids(records)
