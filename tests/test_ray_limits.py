"""What `--workers` and `--ray-address` do when the cluster cannot serve them: one line, in bounded
time, before anything is written, instead of a traceback or a wait that never ends. These never
start Ray (the refusals come first), except the join that a subprocess bounds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from catalog import Catalog, db
from catalog.errors import ArgumentError
from scoring.ray_pool import CONNECT_WAIT_S, place
from tests.conftest import REPO, fixture_records, write_jsonl

CPUS = os.cpu_count() or 1


@pytest.mark.parametrize("workers", [CPUS + 1, 1000])
def test_more_workers_than_cpus_is_refused(workers):
    with pytest.raises(ArgumentError, match=rf"^workers {workers} is more than the Ray cluster's 2 CPUs can host"):
        place(cpus=2, gpus=0, workers=workers, gpus_per_worker=1, device="auto")
    with pytest.raises(ArgumentError, match="use workers 8 or fewer"):  # a GPU worker needs a CPU too
        place(cpus=8, gpus=16, workers=max(workers, 9), gpus_per_worker=1, device="auto")


def ingest_and_embed_six(cli_run) -> None:
    cli_run("ingest", write_jsonl(cli_run.catalog.parent / "rows.jsonl", fixture_records()[:6]))
    cli_run("embed")


def one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def counts(catalog_dir) -> tuple[int, int, int]:
    with Catalog(catalog_dir).read() as conn:
        return tuple(db.execute(conn, f"SELECT count(*) FROM {t}")[0][0] for t in ("embedder", "scorer", "score_run"))


@pytest.mark.slow  # MiniLM builds the catalog; score reads SmolLM2's tokenizer before it checks the workers
@pytest.mark.parametrize("command", [("score", "--model", "smollm2-135m"), ("embed", "--embedder", "minilm")])
@pytest.mark.parametrize("workers", [CPUS + 1, 1000])
def test_too_many_local_workers_is_one_line_before_ray_starts_or_anything_is_written(
    catalog_built_by, cli_run, catalog_dir, command, workers
):
    catalog_built_by(ingest_and_embed_six)
    cli_run("ingest", write_jsonl(catalog_dir.parent / "more.jsonl", fixture_records()[6:8]))  # embed has work
    before = counts(catalog_dir)
    started = time.monotonic()
    line = one_line_error(cli_run(*command, "--workers", workers))
    assert time.monotonic() - started < 30
    assert line == (
        f"Error: --workers {workers} is more than the Ray cluster's {CPUS} CPUs can host (each worker needs one): "
        f"use --workers {CPUS} or fewer"
    )
    assert counts(catalog_dir) == before


@pytest.mark.slow  # MiniLM builds the catalog
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--workers", CPUS + 1, f"Error: --workers {CPUS + 1} is more than the Ray cluster's {CPUS} CPUs can host"),
        ("--ray-address", "nonsense", "Error: --ray-address is not a Ray address"),
    ],
)
def test_ray_options_are_refused_even_when_there_is_nothing_to_embed(catalog_built_by, cli_run, option, value, message):
    catalog_built_by(ingest_and_embed_six)
    assert one_line_error(cli_run("embed", option, value)).startswith(message)


def ingest_six(cli_run) -> None:
    cli_run("ingest", write_jsonl(cli_run.catalog.parent / "rows.jsonl", fixture_records()[:6]))


NOT_AN_ADDRESS = "Error: --ray-address is not a Ray address: give 'auto' (this machine's cluster) or the head node's"


@pytest.mark.slow  # the embed command loads MiniLM's configuration
@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nonsense", NOT_AN_ADDRESS),
        ("http://x", NOT_AN_ADDRESS),
        ("", NOT_AN_ADDRESS),
        (" 10.0.0.5:6379", NOT_AN_ADDRESS),
        ("{0}:1", NOT_AN_ADDRESS),
        ("127.0.0.1:70000", NOT_AN_ADDRESS),
        ("local", NOT_AN_ADDRESS),
        ("127.0.0.1:1", "Error: no Ray cluster answers at --ray-address 127.0.0.1:1 (Connection refused; "),
        ("ray://127.0.0.1:1", "Error: no Ray cluster answers at --ray-address ray://127.0.0.1:1 (Connection refused"),
        ("no-such-host.invalid:6379", "Error: no Ray cluster answers at --ray-address no-such-host.invalid:6379 ("),
    ],
)
def test_a_ray_address_where_no_cluster_answers_is_one_line_in_bounded_time(
    catalog_built_by, cli_run, catalog_dir, address, message
):
    catalog_built_by(ingest_six)
    started = time.monotonic()
    line = one_line_error(cli_run("embed", "--ray-address", address))
    assert time.monotonic() - started < 30
    assert line.startswith(message), line
    assert f"waited at most {CONNECT_WAIT_S} s)" in line or line.startswith(NOT_AN_ADDRESS)
    assert counts(catalog_dir) == (0, 0, 0) and not (catalog_dir / "vectors").exists()


JOIN = """
import sys, time
from scoring import ray_pool
ray_pool.JOIN_WAIT_S = 3
started = time.monotonic()
try:
    ray_pool.join(sys.argv[1])
except ray_pool.UserError as error:
    print(f"{time.monotonic() - started:.1f}", error, flush=True)
"""


@pytest.mark.slow  # imports Ray in a subprocess
def test_an_address_that_answers_but_is_no_ray_cluster_is_given_up_in_bounded_time():
    """Ray would retry such an address for minutes; the process must also exit promptly afterwards."""
    with socket.create_server(("0.0.0.0", 0)) as listener:  # Ray dials the node's outward address
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-c", JOIN, address], capture_output=True, text=True, timeout=120, cwd=REPO
        )
    assert time.monotonic() - started < 60, "the process lingered after giving up"
    seconds, _, line = run.stdout.strip().partition(" ")
    assert 3 <= float(seconds) < 30, run.stdout + run.stderr
    assert "gcs_client" not in run.stderr and "Traceback" not in run.stderr, run.stderr  # Ray's retries stay quiet
    assert line == (
        f"ray_address {address} accepts connections but did not answer as a Ray cluster within 3 s: "
        "give the head node's address (`ray status` there shows it)"
    )
