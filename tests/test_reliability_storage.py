"""Disk full, damaged files and lock holders end in one line; a failed step leaves the catalog
as it was or repairable by the next run; a writer can wait for readers instead of failing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from catalog import Catalog, CatalogBusy
from catalog.errors import StorageError
from catalog.vectors import VectorTable
from tests.conftest import REPO, CliRun, fixture_records, hold_read, write_jsonl

FULL_DISK_ADD = """
import resource, signal, sys
import numpy as np
from pathlib import Path
from catalog.vectors import VectorTable
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))  # writes fail with EFBIG, as on a full disk
VectorTable(Path(sys.argv[1]), 1, 384).add(np.arange(300), np.random.rand(300, 384))
"""


@pytest.mark.slow
@pytest.mark.parametrize("limit", [1, 100, 600, 5000])  # the first write, the version file, the data file
def test_a_disk_full_first_embed_leaves_nothing_a_rerun_trips_on(tmp_path, limit):
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_ADD.format(limit=limit), str(tmp_path / "vectors")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert child.returncode == 1 and "StorageError: vector table" in child.stderr and "free disk space" in child.stderr
    table = VectorTable(tmp_path / "vectors", 1, 384)
    assert len(table.ids()) == 0
    table.add(np.arange(300), np.random.rand(300, 384))
    assert len(VectorTable(tmp_path / "vectors", 1, 384).ids()) == 300


FULL_DISK_COMPACT = """
import resource, signal, sys
from pathlib import Path
from catalog.vectors import VectorTable
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))  # no file may grow: the merged fragment cannot be written
VectorTable(Path(sys.argv[1]), 1, 384).compact()
"""


@pytest.mark.slow
def test_a_disk_full_compaction_is_one_line_and_keeps_every_vector(tmp_path):
    table = VectorTable(tmp_path / "vectors", 1, 384)
    vectors = np.random.default_rng(0).random((300, 384), dtype=np.float32)
    for start in range(0, 300, 100):  # three appends, three fragments to merge
        table.add(np.arange(start, start + 100), vectors[start : start + 100])
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_COMPACT, str(tmp_path / "vectors")], cwd=REPO, capture_output=True, text=True
    )
    assert child.returncode == 1  # a library call: the StorageError is raised (the CLI prints its line)
    assert child.stderr.strip().splitlines()[-1].startswith(f"catalog.errors.StorageError: vector table {table.folder}")
    assert "free disk space" in child.stderr
    ids, stored = VectorTable(tmp_path / "vectors", 1, 384).load()
    assert ids.tolist() == list(range(300)) and np.array_equal(stored, vectors)


def test_a_half_created_table_is_repaired_by_the_next_open(tmp_path):
    """What LanceDB leaves when the disk fills while it creates a table: folders, no version."""
    for part in ("_versions", "_transactions", "data"):
        (tmp_path / "vectors" / "embedder_1.lance" / part).mkdir(parents=True)
    table = VectorTable(tmp_path / "vectors", 1, 4)
    assert len(table.ids()) == 0
    table.add(np.arange(3), np.ones((3, 4)))
    assert VectorTable(tmp_path / "vectors", 1, 4).load()[0].tolist() == [0, 1, 2]


def test_a_vector_table_with_missing_files_names_its_folder(tmp_path):
    VectorTable(tmp_path / "vectors", 1, 4).add(np.arange(3), np.ones((3, 4)))
    folder = tmp_path / "vectors" / "embedder_1.lance"
    for data in (folder / "data").iterdir():
        data.unlink()
    with pytest.raises(StorageError, match=f"vector table {folder}: .*delete that folder"):
        VectorTable(tmp_path / "vectors", 1, 4).load()


@pytest.mark.slow
def test_status_says_run_embed_when_the_vectors_are_gone(tmp_path, cli_run, catalog_dir):
    cli_run("ingest", write_jsonl(tmp_path / "a.jsonl", fixture_records()[:20]), "--dataset", "a")
    assert cli_run("embed").exit_code == 0
    shutil.rmtree(catalog_dir / "vectors")
    status = json.loads(cli_run("status", "--json").output)
    (embedder,) = status["embedders"]
    assert embedder["not_linked"] == 0 and embedder["vectors_missing"] == 20
    assert "run `python cli.py embed`" in cli_run("status").output


def test_a_catalog_folder_that_cannot_be_created_is_one_line(tmp_path, cli_run):
    (tmp_path / "plain_file").write_text("x")
    result = CliRun(tmp_path / "plain_file" / "cat")("ingest", write_jsonl(tmp_path / "a.jsonl", fixture_records()[:3]))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_job_lock_that_cannot_be_opened_is_one_line(tmp_path, catalog_dir):
    (catalog_dir / "job.lock").mkdir(parents=True)
    with pytest.raises(StorageError, match="cannot open the job lock"):
        with Catalog(catalog_dir).job("score"):
            pass


@pytest.mark.slow
def test_a_reader_is_named_as_a_reader(tmp_path, cli_run, catalog_dir):
    cli_run("ingest", write_jsonl(tmp_path / "a.jsonl", fixture_records()[:5]), "--dataset", "a")
    reader = hold_read(catalog_dir / "catalog.duckdb")
    with pytest.raises(CatalogBusy) as busy:
        with Catalog(catalog_dir, busy_timeout=0.3).write():
            pass
    assert (busy.value.pid, busy.value.role) == (reader.pid, "reader")
    assert "-c" in busy.value.command and f"process {reader.pid} (" in str(busy.value)
    assert "is reading it" in str(busy.value) and "writing" not in str(busy.value)
    reader.communicate("release\n", timeout=30)
    assert reader.returncode == 0


@pytest.mark.slow
def test_neighbours_waits_for_a_long_reader_and_stores_its_run(tmp_path, cli_run, catalog_dir):
    """The neighbour search can run for long on a GPU: a reader holding the catalog past the busy
    timeout delays the links' commit, never kills the run."""
    cli_run("ingest", write_jsonl(tmp_path / "a.jsonl", fixture_records()[:20]), "--dataset", "a")
    assert cli_run("embed").exit_code == 0
    reader = hold_read(catalog_dir / "catalog.duckdb")
    command = [sys.executable, str(REPO / "cli.py"), "--catalog", str(catalog_dir), "neighbours", "--rebuild"]
    env = {**os.environ, "MIWV_BUSY_TIMEOUT": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waited = next((line for line in process.stderr if "waiting for the catalog" in line), "")
    reader.communicate("release\n")
    process.communicate(timeout=120)
    assert process.returncode == 0
    assert f"process {reader.pid}" in waited and "is reading it" in waited
    runs = json.loads(cli_run("sql", "SELECT count(*) AS n FROM neighbour_run", "--json").output)
    assert runs == {"n": 2}  # embed's, then the rebuild's


@pytest.mark.slow
def test_a_reader_refused_by_a_writer_names_the_writer(tmp_path, cli_run, catalog_dir, monkeypatch):
    cli_run("ingest", write_jsonl(tmp_path / "a.jsonl", fixture_records()[:5]), "--dataset", "a")
    script = textwrap.dedent("""
        import sys, time
        from catalog import Catalog
        with Catalog(sys.argv[1]).write():
            print("writing", flush=True)
            time.sleep(2)
    """)
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(catalog_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    monkeypatch.setenv("MIWV_BUSY_TIMEOUT", "0.2")
    result = cli_run("status")
    assert result.exit_code == 3 and f"process {writer.pid} (" in result.output and "is writing to it" in result.output
    writer.wait()


def test_permission_denied_is_one_line(tmp_path, cli_run):
    """Tests run as root, which chmod does not stop; /sys refuses even root (EPERM, or EROFS in containers)."""
    records = write_jsonl(tmp_path / "a.jsonl", fixture_records()[:10])
    denied = CliRun("/sys/miwv-catalog")("ingest", records)
    assert denied.exit_code == 4 and "cannot create the catalog folder /sys/miwv-catalog" in denied.output
    assert len(denied.output.strip().splitlines()) == 1
    assert cli_run("ingest", records).exit_code == 0
    export = cli_run("select", "--strategy", "random", "--top-k", "3", "--out", "/sys/top.jsonl")
    assert export.exit_code == 4 and "/sys" in export.output and len(export.output.strip().splitlines()) == 1
    assert json.loads(cli_run("sql", "SELECT count(*) AS n FROM selection", "--json").output)["n"] == 0
