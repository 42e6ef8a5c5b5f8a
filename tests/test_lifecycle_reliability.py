"""A removal, a replace or a purge killed with SIGKILL at each step, or stopped by a full disk,
leaves the catalog in its old state or its new one, never between; a purge stopped after its
DuckDB transaction has its vectors deleted by the next write command.

The kill points are named functions, not guessed times: the child process runs the real CLI with
one function wrapped so that the process sends itself SIGKILL just before or just after it runs,
which is what `kill -9` does at that moment. The full disk is RLIMIT_FSIZE, as in
test_ingest_reliability and test_reliability_storage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pytest

from catalog import Catalog, db
from catalog.embed import embedders
from tests.conftest import REPO, CliRun, fixture_records, write_jsonl
from tests.test_ingest import expected_ids

pytestmark = pytest.mark.slow  # MiniLM and SmolLM2 build the catalog; each case runs the CLI in subprocesses

ROWS = fixture_records()
ALP, OTHER = ROWS[:12], ROWS[8:16]  # rows 8-11 are in both
ALP_V2 = [*ROWS[4:12], *ROWS[40:42]]  # rows 0-3 dropped, two new
PURGED = [*ROWS[:2], ROWS[9], *ROWS[12:14]]  # alp only, both, other only

# `cli.py ARGS` with the function at argv[1] ("module:attribute.path") wrapped: SIGKILL before or after it runs.
KILL_AT = """
import importlib, os, signal, sys
where, when = sys.argv[1], sys.argv[2]
module, _, attribute = where.partition(":")
owner = importlib.import_module(module)
*parents, name = attribute.split(".")
for part in parents:
    owner = getattr(owner, part)
original = getattr(owner, name)
def killed(*args, **kwargs):
    if when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, name, killed)
from cli import main
sys.argv = ["cli.py", *sys.argv[3:]]
main()
"""

# `cli.py ARGS` on a full disk: no file may grow past argv[1] bytes (writes fail with EFBIG).
FULL_DISK = """
import resource, signal, sys
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from cli import main
sys.argv = ["cli.py", *sys.argv[2:]]
main()
"""

# `cli.py ARGS` with the disk filling once the purge's DuckDB transaction and checkpoint are done.
FULL_DISK_AFTER_CHECKPOINT = """
import resource, signal, sys
import catalog.lifecycle as lifecycle
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
checkpoint = lifecycle._checkpoint
def then_full(catalog):
    checkpoint(catalog)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))
lifecycle._checkpoint = then_full
from cli import main
sys.argv = ["cli.py", *sys.argv[1:]]
main()
"""

# What must move together; timestamps left out (a rerun writes its own).
STATE = {
    "sample": "SELECT sample_id FROM sample",
    "membership": "SELECT sample_id, dataset, ingest_id, source_row FROM membership",
    "membership_left": "SELECT * FROM membership_left",
    "dataset_version": "SELECT * FROM dataset_version",
    "catalog_change": "SELECT change_id, kind, ingest_id, detail FROM catalog_change",
    "purged_sample": "SELECT * FROM purged_sample",
    "ingest_batch": "SELECT ingest_id, dataset, rows_read, rows_new, rows_duplicate FROM ingest_batch",
    "neighbour_link": "SELECT sample_id, embedder_id, neighbour_id, similarity FROM neighbour_link",
    "score_current": "SELECT * FROM score_current",
    "zero_shot_loss": "SELECT sample_id, scorer_id, loss FROM zero_shot_loss",
    "one_shot_loss": "SELECT sample_id, scorer_id, neighbour_id, loss FROM one_shot_loss",
}

# Each must count 0 in any state a command leaves.
BROKEN = {
    "a link of a sample in no dataset, or to one": """SELECT count(*) FROM neighbour_link
        WHERE sample_id NOT IN (SELECT sample_id FROM membership)
           OR neighbour_id NOT IN (SELECT sample_id FROM membership)""",
    "a current score of a sample in no dataset": """SELECT count(*) FROM score_current
        WHERE sample_id NOT IN (SELECT sample_id FROM membership)""",
    "a current score whose neighbour is not the sample's link": """SELECT count(*) FROM score_current c
        LEFT JOIN neighbour_link l ON l.sample_id = c.sample_id AND l.embedder_id = c.embedder_id
        WHERE l.neighbour_id IS DISTINCT FROM c.neighbour_id""",
    "a dataset whose last version does not count its members": """SELECT count(*) FROM
        (SELECT dataset, arg_max(members, version) AS members FROM dataset_version GROUP BY dataset) v
        WHERE members <> (SELECT count(*) FROM membership m WHERE m.dataset = v.dataset)""",
    "a version or an ended membership without its change": """SELECT count(*) FROM
        (SELECT change_id FROM dataset_version UNION ALL SELECT change_id FROM membership_left)
        WHERE change_id NOT IN (SELECT change_id FROM catalog_change)""",
    "a membership without its sample": """SELECT count(*) FROM membership
        WHERE sample_id NOT IN (SELECT sample_id FROM sample)""",
    "a purged sample still stored": "SELECT count(*) FROM purged_sample p SEMI JOIN sample s USING (sample_id)",
}


def embedded_and_scored(run: CliRun) -> None:
    """alp (12 real rows) and other (8, four shared), embedded with MiniLM and scored with SmolLM2."""
    folder = run.catalog.parent
    assert run("ingest", write_jsonl(folder / "alp.jsonl", ALP), "--dataset", "alp").exit_code == 0
    assert run("ingest", write_jsonl(folder / "other.jsonl", OTHER), "--dataset", "other").exit_code == 0
    assert run("embed").exit_code == 0
    assert run("score", "--model", "smollm2-135m").exit_code == 0


@pytest.fixture
def scored(catalog_built_by, catalog_dir) -> Path:
    catalog_built_by(embedded_and_scored)
    return catalog_dir


def state(catalog_dir: Path) -> dict[str, list[tuple]]:
    with Catalog(catalog_dir).read() as conn:
        return {table: db.execute(conn, f"{query} ORDER BY ALL") for table, query in STATE.items()}


def assert_consistent(catalog_dir: Path) -> None:
    with Catalog(catalog_dir).read() as conn:
        broken = {what: db.execute(conn, query)[0][0] for what, query in BROKEN.items()}
    assert not any(broken.values()), broken


def pending_purges(catalog_dir: Path) -> int:
    with Catalog(catalog_dir).read() as conn:
        return db.execute(conn, "SELECT count(*) FROM catalog_change WHERE NOT vectors_done")[0][0]


def vector_ids(catalog_dir: Path) -> set[int]:
    catalog = Catalog(catalog_dir)
    [embedder] = embedders(catalog)
    return set(embedder.vectors(catalog).ids().tolist())


def run_script(script: str, *args) -> subprocess.CompletedProcess:
    """`python -c script ARGS` in the repository, as a user's process would run it."""
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cli_args(command: str, folder: Path) -> list[str]:
    """The command line of each change, its input files written to `folder`."""
    if command == "remove":
        return ["remove", "--dataset", "other"]
    if command == "replace":
        return ["ingest", str(write_jsonl(folder / "alp_v2.jsonl", ALP_V2)), "--dataset", "alp", "--replace"]
    ids = folder / "takedown.txt"
    ids.write_text("".join(f"{i}\n" for i in sorted(expected_ids(PURGED))))
    return ["remove", "--ids", str(ids), "--purge"]


def run_killed(catalog_dir: Path, args: list[str], where: str, when: str) -> None:
    killed = run_script(KILL_AT, where, when, "--catalog", catalog_dir, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr


def reference(scored: Path, args: list[str], tmp_path: Path) -> dict:
    """The state the change leaves when nothing stops it, on a copy of the same catalog."""
    copy = shutil.copytree(scored, tmp_path / "reference")
    done = CliRun(copy)(*args, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["links_to_repair"] > 0  # the change reaches links and scores, not only rows
    assert pending_purges(copy) == 0
    return state(copy)


# (command, function, kill before/after it, the state the catalog must be in: old or new)
KILLS = [
    ("remove", "catalog.lifecycle:leave", "after", "old"),  # inside the transaction, rows already deleted
    ("remove", "catalog.lifecycle:record_versions", "after", "old"),  # the transaction's last statement done
    ("remove", "terminal.changes:print_removal", "before", "new"),  # committed, not yet said
    ("replace", "catalog.lifecycle:leave", "before", "old"),  # samples and memberships in, none out yet
    ("replace", "catalog.lifecycle:record_versions", "after", "old"),
    ("replace", "terminal.render:print_ingested", "before", "new"),
    ("purge", "catalog.lifecycle:_purge_rows", "after", "old"),  # texts, losses and links deleted, uncommitted
    ("purge", "catalog.lifecycle:_checkpoint", "before", "new"),  # committed; no vector deleted yet
    ("purge", "lancedb.table:LanceTable.optimize", "before", "new"),  # vectors deleted, older versions kept
    ("purge", "catalog.vectors:VectorTable.delete", "after", "new"),  # vectors gone, not marked done
]


def next_write(where: str, catalog_dir: Path, folder: Path):
    """A different write command after each purge kill point: each must finish the vector deletion."""
    run = CliRun(catalog_dir)
    if where.startswith("lancedb"):
        return run("ingest", write_jsonl(folder / "late.jsonl", ROWS[50:52]), "--dataset", "late")
    if where.startswith("catalog.vectors"):
        return run("remove", "--purge")
    return run("neighbours")


@pytest.mark.parametrize(("command", "where", "when", "left"), KILLS, ids=[f"{c}-{w}-{t}" for c, w, t, _ in KILLS])
def test_a_change_killed_at_any_step_leaves_the_old_or_the_new_state(scored, tmp_path, command, where, when, left):
    args = cli_args(command, tmp_path)
    before, vectors_before = state(scored), vector_ids(scored)
    after = reference(scored, args, tmp_path)
    assert after != before

    run_killed(scored, args, where, when)
    assert_consistent(scored)
    assert state(scored) == (before if left == "old" else after)

    purged = expected_ids(PURGED)
    if left == "old":  # a rerun makes the change whole
        assert CliRun(scored)(*args).exit_code == 0
        assert state(scored) == after
    elif command == "purge":  # the vector deletion is still to do: the next write command does it
        assert pending_purges(scored) == 1
        assert CliRun(scored)("status").exit_code == 0 and pending_purges(scored) == 1  # a read changes nothing
        following = next_write(where, scored, tmp_path)
        assert following.exit_code == 0, following.output
    assert pending_purges(scored) == 0
    if command == "purge":
        assert vector_ids(scored) == vectors_before - purged
    else:
        assert vector_ids(scored) == vectors_before  # retired samples keep their vectors
    assert_consistent(scored)


def test_a_full_disk_during_a_removal_is_one_line_and_keeps_the_old_state(scored, tmp_path):
    args = cli_args("remove", tmp_path)
    before = state(scored)
    after = reference(scored, args, tmp_path)
    with Catalog(scored).write() as conn:  # an empty write-ahead log: the removal's commit starts it
        conn.exec_driver_sql("CHECKPOINT")
    failed = run_script(FULL_DISK, 800, "--catalog", scored, *args)  # a short job.lock line fits, the log does not
    assert failed.returncode == 4, failed.stderr
    assert failed.stdout == "" and failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith(f"Error: catalog file {scored / 'catalog.duckdb'}:")
    assert "free disk space" in failed.stderr
    assert state(scored) == before
    assert_consistent(scored)
    assert CliRun(scored)(*args).exit_code == 0  # with room again, the same removal goes through
    assert state(scored) == after


def test_a_full_disk_at_the_purge_vector_step_is_finished_by_the_next_command(scored, tmp_path):
    args = cli_args("purge", tmp_path)
    vectors_before = vector_ids(scored)
    after = reference(scored, args, tmp_path)
    failed = run_script(FULL_DISK_AFTER_CHECKPOINT, "--catalog", scored, *args)
    assert failed.returncode == 4, failed.stderr
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr
    assert "vector table" in failed.stderr and "free disk space" in failed.stderr
    assert state(scored) == after  # the DuckDB step is committed: the samples are purged there
    assert pending_purges(scored) == 1
    assert_consistent(scored)
    assert CliRun(scored)("neighbours").exit_code == 0  # any write command finishes the vector deletion
    assert pending_purges(scored) == 0
    assert vector_ids(scored) == vectors_before - expected_ids(PURGED)


def test_the_vectors_of_a_purge_are_gone_from_older_table_versions_too(scored, tmp_path):
    args = cli_args("purge", tmp_path)
    run_killed(scored, args, "lancedb.table:LanceTable.optimize", "before")
    assert CliRun(scored)("neighbours").exit_code == 0
    catalog = Catalog(scored)
    [embedder] = embedders(catalog)
    vectors = embedder.vectors(catalog)
    table = lancedb.connect(str(vectors.root)).open_table(vectors.name)
    purged = np.array(sorted(expected_ids(PURGED)))
    for version in table.list_versions():
        table.checkout(version["version"])
        held = table.to_arrow()["sample_id"].to_numpy()
        assert not np.isin(purged, held).any(), version
