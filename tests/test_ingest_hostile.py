"""Inputs a hostile-but-realistic user gave ingest (issue 21, items 14 and 15): an empty hf: name,
hf: shards whose schemas disagree, names that are not UTF-8, and folders of shards reached through
symbolic links (to sub-folders, in loops, dangling). Each is ingested or refused in one line, with
nothing written, from the CLI and from the Python API alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import miwv
from catalog import Catalog, db
from catalog.errors import UserError
from tests.conftest import REPO, fixture_records
from tests.test_ingest import expected_ids, sample_ids, write_format

FRONTS = ["cli", "api"]
NOT_UTF8 = {
    "latin-1": b"caf\xe9",
    "lone byte": b"\xff",
    "cut sequence": b"na\xc3ve",
    "surrogate bytes": b"\xed\xa0\x80",
}


def undecodable(raw: bytes) -> str:
    """`raw` as Python hands bytes that are not UTF-8 to a program (argv, file names): surrogate-escaped."""
    return os.fsdecode(raw)


def escaped(raw: bytes) -> str:
    """How the catalog records such a name: each byte that is not UTF-8 as a \\xNN escape."""
    return raw.decode("utf-8", "backslashreplace")


def write_shard(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # Arrow cannot open a name that is not UTF-8
        pq.write_table(pa.Table.from_pylist(records), handle)
    return path


def ingest(front: str, catalog_dir: Path, cli_run, source, dataset: str | None = None) -> tuple[int, str, dict]:
    """(exit code, error text, result) of ingesting `source` through the CLI or the Python API."""
    if front == "cli":
        flags = ["--dataset", dataset] if dataset is not None else []
        result = cli_run("ingest", source, *flags, "--json")
        ok = result.exit_code == 0
        return result.exit_code, "" if ok else result.output, json.loads(result.stdout) if ok else {}
    try:
        return 0, "", miwv.open(catalog_dir).ingest(source, dataset).as_dict()
    except UserError as error:
        return error.exit_code, str(error), {}


def refused(front: str, catalog_dir: Path, cli_run, source, dataset: str | None = None) -> str:
    """The one-line message of an ingest that must fail and write nothing."""
    code, message, _ = ingest(front, catalog_dir, cli_run, source, dataset)
    assert code != 0
    assert len(message.strip().splitlines()) == 1 and "Traceback" not in message, message
    assert not (catalog_dir / "catalog.duckdb").exists()
    return message


def ingested(front: str, catalog_dir: Path, cli_run, source, dataset: str | None = None) -> dict:
    code, message, result = ingest(front, catalog_dir, cli_run, source, dataset)
    assert code == 0, message
    return result


def recorded_batches(catalog_dir: Path) -> list[dict]:
    with Catalog(catalog_dir).read() as conn:
        return db.records(conn, "SELECT path, dataset, rows_read FROM ingest_batch ORDER BY ingest_id")


# --- item 14: hf: names and schemas ---


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("name", ["hf:", "hf:   "])
def test_an_hf_source_without_a_name_is_refused(tmp_path, catalog_dir, cli_run, front, name):
    message = refused(front, catalog_dir, cli_run, name)
    assert "hf: needs a dataset name" in message


SCHEMA_CLASHES = {
    "other columns": lambda r: {"conversations": [{"from": "human", "value": r["instruction"]}]},
    "other type": lambda r: {**r, "output": [r["output"]]},
    "extra column": lambda r: {**r, "source": "dolly"},
}


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("clash", list(SCHEMA_CLASHES))
def test_hf_shards_whose_schemas_disagree_are_one_line(tmp_path, catalog_dir, cli_run, front, clash, hf_cache):
    records = fixture_records()[:20]
    folder = tmp_path / "hub"
    write_shard(folder / "train-00000-of-00002.parquet", records[:10])
    write_shard(folder / "train-00001-of-00002.parquet", [SCHEMA_CLASHES[clash](r) for r in records[10:]])
    message = refused(front, catalog_dir, cli_run, f"hf:{folder}")
    assert f"hf:{folder}: " in message and "columns" in message


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """load_dataset's cache in a temp dir, so tests never touch (or depend on) the user's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


# --- item 14: names that are not UTF-8 ---


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("raw", list(NOT_UTF8.values()), ids=list(NOT_UTF8))
def test_a_dataset_name_that_is_not_utf8_is_refused(tmp_path, catalog_dir, cli_run, front, raw):
    path = write_format(tmp_path / "rows.jsonl", fixture_records()[:5])
    message = refused(front, catalog_dir, cli_run, path, dataset=undecodable(raw))
    flag = "--dataset" if front == "cli" else "dataset"
    assert f"{flag} holds bytes that are not UTF-8; give a name in UTF-8 (got {escaped(raw)})" in message


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("given", ["", "  ", None])
def test_a_blank_dataset_name_given_or_defaulted_is_refused(tmp_path, catalog_dir, cli_run, front, given):
    folder = tmp_path / "..."  # a name with nothing before its first dot
    write_shard(folder / "a.parquet", fixture_records()[:5])
    message = refused(front, catalog_dir, cli_run, folder, dataset=given)
    flag = "--dataset" if front == "cli" else "dataset"
    expected = f"{flag} must" if given is not None else f"pass {flag}: the source's name gives none"
    assert expected in message


FILE_FORMATS = ["jsonl", "jsonl.gz", "json", "csv", "parquet"]


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("raw", list(NOT_UTF8.values()), ids=list(NOT_UTF8))
@pytest.mark.parametrize("suffix", FILE_FORMATS)
def test_a_file_whose_name_is_not_utf8_is_ingested_under_an_escaped_name(
    tmp_path, catalog_dir, cli_run, front, raw, suffix
):
    records = fixture_records()[:8]
    path = write_format(tmp_path / f"rows.{suffix}", records).rename(
        tmp_path / undecodable(raw + f".{suffix}".encode())
    )
    result = ingested(front, catalog_dir, cli_run, path)
    assert result["dataset"] == escaped(raw)
    assert result["path"] == escaped(os.fsencode(path.resolve()))
    assert recorded_batches(catalog_dir) == [{"path": result["path"], "dataset": escaped(raw), "rows_read": 8}]
    assert sample_ids(catalog_dir) == expected_ids(records)


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("raw", list(NOT_UTF8.values()), ids=list(NOT_UTF8))
def test_a_folder_and_shards_whose_names_are_not_utf8_are_ingested(tmp_path, catalog_dir, cli_run, front, raw):
    records = fixture_records()[:20]
    folder = tmp_path / undecodable(raw)
    write_shard(folder / undecodable(raw + b"-a.parquet"), records[:10])
    write_shard(folder / undecodable(raw) / "b.parquet", records[10:])
    result = ingested(front, catalog_dir, cli_run, folder)
    assert (result["dataset"], result["rows_read"]) == (escaped(raw), 20)
    assert sample_ids(catalog_dir) == expected_ids(records)


@pytest.mark.parametrize("front", FRONTS)
def test_a_bad_row_in_a_file_whose_name_is_not_utf8_names_the_file_escaped(tmp_path, catalog_dir, cli_run, front):
    raw = b"caf\xe9.jsonl"
    records = [*fixture_records()[:3], {"instruction": "x", "output": ""}]
    path = write_format(tmp_path / undecodable(raw), records)
    message = refused(front, catalog_dir, cli_run, path)
    assert f"{escaped(os.fsencode(tmp_path))}/{escaped(raw)}: line 4: empty response" in message


CLI = [sys.executable, str(REPO / "cli.py")]


@pytest.mark.slow
def test_raw_bytes_on_the_command_line(tmp_path):
    """What a shell passes: argv bytes that are not UTF-8, errors printed to a real stderr."""
    folder = os.fsencode(tmp_path)
    path = os.fsencode(write_format(tmp_path / undecodable(b"caf\xe9.jsonl"), fixture_records()[:5]))
    catalog = folder + b"/catalog"
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}

    def run(*args: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, b"--catalog", catalog, *args], capture_output=True, env=env, timeout=120)

    bad_name = run(b"ingest", path, b"--dataset", b"\xe9t\xe9")
    assert bad_name.returncode != 0 and b"Traceback" not in bad_name.stderr
    assert bad_name.stderr.decode().strip() == (
        "Error: --dataset holds bytes that are not UTF-8; give a name in UTF-8 (got \\xe9t\\xe9)"
    )
    assert not os.path.exists(catalog + b"/catalog.duckdb")

    good = run(b"ingest", path, b"--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["dataset"] == "caf\\xe9"
    assert b"caf\\xe9" in run(b"status").stdout

    hub = tmp_path / "hub"
    write_shard(hub / "train-00000-of-00002.parquet", fixture_records()[:3])
    write_shard(hub / "train-00001-of-00002.parquet", [{**r, "source": "x"} for r in fixture_records()[3:6]])
    clash = run(b"ingest", b"hf:" + os.fsencode(hub))
    assert clash.returncode == 2 and len(clash.stderr.decode().strip().splitlines()) == 1, clash.stderr


# --- item 15: folders reached through links ---


def shards_with_links(tmp_path: Path) -> tuple[Path, list[dict]]:
    """folder/own.parquet, folder/linked -> ../elsewhere (two shards, one a level down), and folder/direct.parquet
    -> a shard outside the folder: 30 rows, 20 of them only reachable through a link."""
    records = fixture_records()[:30]
    folder = tmp_path / "shards"
    write_shard(folder / "own.parquet", records[:10])
    write_shard(tmp_path / "elsewhere" / "a.parquet", records[10:15])
    write_shard(tmp_path / "elsewhere" / "deeper" / "b.parquet", records[15:20])
    write_shard(tmp_path / "outside.parquet", records[20:])
    (folder / "linked").symlink_to("../elsewhere", target_is_directory=True)
    (folder / "direct.parquet").symlink_to(tmp_path / "outside.parquet")
    return folder, records


@pytest.mark.parametrize("front", FRONTS)
def test_shards_in_a_linked_folder_or_linked_themselves_are_ingested(tmp_path, catalog_dir, cli_run, front):
    folder, records = shards_with_links(tmp_path)
    result = ingested(front, catalog_dir, cli_run, folder)
    assert (result["rows_read"], result["rows_new"]) == (30, 30)
    assert sample_ids(catalog_dir) == expected_ids(records)


@pytest.mark.parametrize("front", FRONTS)
def test_a_link_loop_or_a_second_link_reads_each_real_shard_once(tmp_path, catalog_dir, cli_run, front):
    folder, records = shards_with_links(tmp_path)
    (folder / "linked" / "deeper" / "up").symlink_to("../../shards", target_is_directory=True)  # a loop
    (folder / "self").symlink_to(".", target_is_directory=True)  # a loop on itself
    (folder / "again").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a second way in
    (folder / "twice.parquet").symlink_to("own.parquet")
    result = ingested(front, catalog_dir, cli_run, folder)
    assert (result["rows_read"], result["rows_new"]) == (30, 30)
    assert sample_ids(catalog_dir) == expected_ids(records)


DANGLING = {
    "to nothing": lambda folder: (folder / "gone.parquet").symlink_to(folder / "missing.parquet"),
    "in a sub-folder": lambda folder: (folder / "sub").mkdir() or (folder / "sub" / "gone.parquet").symlink_to("x"),
    "to itself": lambda folder: (folder / "gone.parquet").symlink_to("gone.parquet"),
}


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("kind", list(DANGLING))
def test_a_dangling_parquet_link_is_refused(tmp_path, catalog_dir, cli_run, front, kind):
    folder, _ = shards_with_links(tmp_path)
    DANGLING[kind](folder)
    message = refused(front, catalog_dir, cli_run, folder)
    link = "sub/gone.parquet" if kind == "in a sub-folder" else "gone.parquet"
    assert f"{folder}: {link} is a link to nothing readable" in message


@pytest.mark.parametrize("front", FRONTS)
def test_an_unreadable_sub_folder_is_refused(tmp_path, catalog_dir, cli_run, front):
    folder, _ = shards_with_links(tmp_path)
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: permissions do not apply")
        message = refused(front, catalog_dir, cli_run, folder)
    finally:
        locked.chmod(0o755)
    assert f"{folder}: cannot read the folder locked" in message
