"""`score --workers` and `embed --workers` on a local Ray with the real SmolLM2 and MiniLM:
the same numbers as in-process, a killed worker's unit redone, other weights refused, a killed
driver leaving no process behind, services on loopback only, and no silent wait for room. One
small local Ray (2 CPUs), started as `--workers` starts one, serves the module."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import psutil
import pytest
import ray
from click.testing import CliRunner

from catalog import Catalog, db
from catalog.errors import UserError
from scoring import ray_pool
from scoring.ray_pool import ActorPool, RayCluster, WeightsMismatch, start_local, stop_local
from tests.conftest import REPO, fixture_records, write_jsonl

pytestmark = pytest.mark.slow  # a local Ray and real SmolLM2 / MiniLM workers


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray started as `--workers` starts one."""
    reaper = start_local(cpus=2, gpus=0, object_store_memory=100 << 20)
    yield
    stop_local(reaper)


def prepare(tmp_path, cli_run, records) -> None:
    assert cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", records), "--dataset", "mix").exit_code == 0
    assert cli_run("embed").exit_code == 0


def run_in(catalog_dir, *args):
    from cli import cli

    return CliRunner().invoke(cli, ["--catalog", str(catalog_dir), *map(str, args)], catch_exceptions=False)


def losses(catalog_dir) -> dict[int, tuple]:
    with Catalog(catalog_dir).read() as conn:
        rows = db.execute(
            conn, "SELECT sample_id, neighbour_id, zero_shot_loss, one_shot_loss, status FROM miwv_scores"
        )
    return {r[0]: r[1:] for r in rows}


def test_two_workers_store_the_in_process_losses(tmp_path, cli_run, catalog_dir, local_ray):
    prepare(tmp_path, cli_run, fixture_records()[::10])  # 18 rows
    alone = tmp_path / "alone"
    shutil.copytree(catalog_dir, alone)
    assert run_in(alone, "score", "--model", "smollm2-135m").exit_code == 0
    result = cli_run("score", "--model", "smollm2-135m", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "cpu x 2 workers" in result.output and "pool 18, 18 needed passes" in result.output
    spread, here = losses(catalog_dir), losses(alone)
    assert spread.keys() == here.keys() and len(here) == 18
    for sample_id, (neighbour, zero, one, status) in here.items():
        assert spread[sample_id][0] == neighbour and spread[sample_id][3] == status
        assert abs(spread[sample_id][1] - zero) < 1e-4 and abs(spread[sample_id][2] - one) < 1e-4
    with Catalog(catalog_dir).read() as conn:
        workers, tokens = db.execute(conn, "SELECT workers, tokens_run FROM score_run")[0]
        shares = db.execute(conn, "SELECT worker, node_id, device, tokens_run FROM score_run_worker ORDER BY 1")
    assert workers == 2 and [s[0] for s in shares] == [0, 1]
    assert all(s[1] and s[2] == "cpu" and s[3] > 0 for s in shares) and sum(s[3] for s in shares) == tokens


def test_workers_score_a_dataset_scope_with_two_examples_as_in_process(tmp_path, cli_run, catalog_dir, local_ray):
    """Units follow the scoped neighbour graph and each further example's round: the same MIWV@1 and
    MIWV@2 rows as in-process."""
    records = fixture_records()
    assert cli_run("ingest", write_jsonl(tmp_path / "a.jsonl", records[3::12]), "--dataset", "a").exit_code == 0
    both = records[3::24] + records[5::24]  # half of them also in 'a'
    assert cli_run("ingest", write_jsonl(tmp_path / "b.jsonl", both), "--dataset", "b").exit_code == 0
    assert cli_run("embed", "--scope", "dataset").exit_code == 0
    alone = tmp_path / "alone"
    shutil.copytree(catalog_dir, alone)
    scoring = ("score", "--model", "smollm2-135m", "--dataset", "b", "--scope", "dataset", "--examples", "2")
    assert run_in(alone, *scoring).exit_code == 0
    result = cli_run(*scoring, "--workers", "2")
    assert result.exit_code == 0, result.output

    def per_example(path) -> dict[tuple, tuple]:
        with Catalog(path).read() as conn:
            rows = db.execute(
                conn, "SELECT sample_id, rank, neighbour_id, zero_shot_loss, one_shot_loss FROM miwv_examples"
            )
        return {(r[0], r[1]): r[2:] for r in rows}

    spread, here = per_example(catalog_dir), per_example(alone)
    assert spread.keys() == here.keys() and {rank for _, rank in here} == {1, 2}
    for key, (neighbour, zero, one) in here.items():
        assert spread[key][0] == neighbour
        assert abs(spread[key][1] - zero) < 1e-4 and abs(spread[key][2] - one) < 1e-4


def worker_processes(method: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(method in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_a_killed_worker_unit_runs_again_and_nothing_is_stored_twice(tmp_path, cli_run, catalog_dir, local_ray):
    prepare(tmp_path, cli_run, fixture_records()[1::10])  # 18 rows
    outcome = {}
    scoring = threading.Thread(
        target=lambda: outcome.update(result=cli_run("score", "--model", "smollm2-135m", "--workers", "2"))
    )
    scoring.start()
    deadline, killed = time.monotonic() + 240, None
    while killed is None and time.monotonic() < deadline and scoring.is_alive():
        busy = worker_processes("ScoreWorker.score")
        if busy:
            killed = busy[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    scoring.join(timeout=300)
    assert killed is not None, "no worker was seen scoring"
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    with Catalog(catalog_dir).read() as conn:
        ones, distinct = db.execute(conn, "SELECT count(*), count(DISTINCT sample_id) FROM one_shot_loss")[0]
        workers = db.execute(conn, "SELECT count(*) FROM score_run_worker")[0][0]
    assert ones == distinct == 18 and len(losses(catalog_dir)) == 18
    assert workers >= 2  # the replacement has its own row when it committed


def test_a_worker_whose_weights_differ_is_refused(local_ray):
    from scoring.batching import CPU_BATCHING
    from scoring.models import resolve_model
    from scoring.ray_workers import ScoreWorker
    from scoring.score import ScorerSetup

    spec = resolve_model("smollm2-135m")
    setup = ScorerSetup(replace(spec, fingerprint="0" * 64), "chat", 4096, "float32", CPU_BATCHING)
    actor = ray.remote(ScoreWorker).options(num_cpus=1)
    pool = ActorPool(lambda number: actor.remote(setup, 0, 1), 1)
    expected = rf"^model 'smollm2-135m' on node \S+ \(\w+\) has fingerprint {spec.fingerprint[:16]}, but the driver's"
    with pytest.raises(WeightsMismatch, match=expected):  # the worker's own message, no Ray traceback
        pool.wait_loaded()
    pool.close()


class Halver:
    """A worker that runs out of memory above two rows."""

    def load(self) -> tuple[str, str]:
        return "node", "cpu"

    def work(self, rows: int) -> int:
        if rows > 2:
            raise MemoryError(f"{rows} rows do not fit")
        return rows


def test_a_unit_that_raises_is_retried_with_half_the_rows_then_given_up(local_ray):
    actor = ray.remote(Halver).options(num_cpus=1)
    pool = ActorPool(lambda number: actor.remote(), 1)
    pool.wait_loaded()
    done = []
    failed = pool.run(
        [8, 1, 5],
        lambda worker, rows: worker.work.remote(rows),
        lambda rows, result, worker: done.append((rows, result, worker.worker)),
        lambda rows, error: rows // 2 if rows > 1 and rows != 5 else None,
    )
    pool.close()
    assert sorted(done) == [(1, 1, 0), (2, 2, 0)]
    assert [rows for rows, _ in failed] == [5] and "5 rows do not fit" in str(failed[0][1])


def test_embed_with_two_workers_gives_the_same_vectors_and_links(tmp_path, cli_run, catalog_dir, local_ray):
    rows = write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:24])
    alone = tmp_path / "alone"
    assert run_in(alone, "ingest", rows).exit_code == 0 and run_in(alone, "embed").exit_code == 0
    assert cli_run("ingest", rows).exit_code == 0
    result = cli_run("embed", "--workers", "2")
    assert result.exit_code == 0, result.output
    vectors = {}
    for directory in (catalog_dir, alone):
        catalog = Catalog(directory)
        from catalog.embed import find_embedder

        vectors[directory] = find_embedder(catalog, None).vectors(catalog).load()
        with catalog.read() as conn:
            vectors[directory, "links"] = db.execute(conn, "SELECT sample_id, neighbour_id FROM neighbours ORDER BY 1")
    (ids_a, vec_a), (ids_b, vec_b) = vectors[catalog_dir], vectors[alone]
    assert np.array_equal(ids_a, ids_b) and len(ids_a) == 24
    assert np.abs(vec_a - vec_b).max() < 1e-6
    assert vectors[catalog_dir, "links"] == vectors[alone, "links"]


def test_a_killed_driver_leaves_no_process_and_a_rerun_finishes(tmp_path, cli_run, catalog_dir):
    prepare(tmp_path, cli_run, fixture_records()[2::9])  # 20 rows
    env = {**os.environ, "MIWV_CATALOG": str(catalog_dir), "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(REPO / "cli.py"), "score", "--model", "smollm2-135m", "--workers", "2"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    catalog = Catalog(catalog_dir, busy_timeout=30)
    deadline, committed = time.monotonic() + 300, 0
    while time.monotonic() < deadline and driver.poll() is None and not committed:
        time.sleep(1)
        with catalog.read() as conn:
            committed = db.execute(conn, "SELECT count(*) FROM one_shot_loss")[0][0]
    assert driver.poll() is None and committed, "the run ended before it could be killed"
    family = psutil.Process(driver.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in family)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, [" ".join(p.cmdline())[:80] for p in alive]
    rerun = cli_run("score", "--model", "smollm2-135m")
    assert rerun.exit_code == 0, rerun.output
    with Catalog(catalog_dir).read() as conn:
        ones, distinct = db.execute(conn, "SELECT count(*), count(DISTINCT sample_id) FROM one_shot_loss")[0]
    assert ones == distinct == 20
    needed = int(re.search(r"pool 20, (\d+) needed passes", rerun.output).group(1))
    assert needed <= 20 - committed  # only what the killed run had not committed


def listening_ips(pids: set[int]) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids}


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_a_local_ray_listens_on_loopback_only(local_ray):
    holder = ray.remote(Halver).options(num_cpus=1).remote()
    assert ray.get(holder.load.remote()) == ("node", "cpu")  # a worker process is up, with its own server
    family = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    ips = listening_ips(family)
    ray.kill(holder)
    assert len(ips) and all(is_loopback(ip) for ip in ips), ips  # not 0.0.0.0, ::, or this host's address


def test_workers_the_cluster_has_no_room_for_are_refused_after_a_bounded_wait(local_ray, monkeypatch):
    """A remote cluster may list CPUs that other jobs hold: the reservation waits PLACEMENT_WAIT_S, then says so."""
    from ray.util.placement_group import placement_group, remove_placement_group

    others = placement_group([{"CPU": 2}])
    assert others.wait(60)
    monkeypatch.setattr(ray_pool, "PLACEMENT_WAIT_S", 2)
    started = time.monotonic()
    with pytest.raises(
        UserError, match=r"^the Ray cluster found no room for 2 workers \(1 CPU each\) within 2 s, having 0 CPU free"
    ):
        RayCluster.connect(2, None, 1, "cpu")
    assert time.monotonic() - started < 30
    remove_placement_group(others)
    cluster = RayCluster.connect(2, None, 1, "cpu")  # room again: reserved, and given back on close
    cluster.close()
