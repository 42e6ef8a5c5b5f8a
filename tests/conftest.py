"""Shared fixtures: real rows (tests/data, ../shared/data), temp catalogs, the CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "data" / "mixed_180.jsonl"
SHARED_DATA = Path(os.environ.get("MIWV_SHARED_DATA", REPO.parent / "shared" / "data"))


def fixture_records() -> list[dict]:
    """The 180 real Alpaca rows of the committed fixture."""
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


HOLD_READ = """
import sys, duckdb
connection = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
sys.stdin.readline()
"""


def kill_9_once(catalog: Path, args: list[str], ready: Callable[[], bool], what: str) -> None:
    """Run `cli.py --catalog CATALOG ARGS` and kill -9 it as soon as `ready()` holds (polled);
    fails if the command ends first or `ready` takes over 10 minutes. `what`: what ready() waits for."""
    command = [sys.executable, "cli.py", "--catalog", str(catalog), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not ready():
            assert process.poll() is None, f"{args[0]} ended before {what}"
            assert time.monotonic() < deadline, f"no {what} within 10 minutes"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def hold_read(db_file: Path) -> subprocess.Popen:
    """A process holding `db_file` open read-only until a line is written to its stdin
    (`reader.communicate("release\\n")`), so a test can see a writer wait for a reader."""
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLD_READ, str(db_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout.readline().strip() == "holding"
    return reader


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    return tmp_path / "catalog"


class CliRun:
    """`cli.py --catalog CATALOG ARGS...`, in-process through click's CliRunner: the one way tests
    drive the CLI (a subprocess only where a test must kill it). Bugs raise; user errors exit != 0."""

    def __init__(self, catalog: Path) -> None:
        self.catalog = Path(catalog)

    def __call__(self, *args: Any) -> Result:
        from cli import cli

        return CliRunner().invoke(cli, ["--catalog", str(self.catalog), *map(str, args)], catch_exceptions=False)

    def json(self, *args: Any) -> Any:
        """The command's --json result (stdout only: progress bars go to stderr); it must succeed."""
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def cli_run(catalog_dir: Path) -> CliRun:
    """The CLI on this test's temp catalog."""
    return CliRun(catalog_dir)


@pytest.fixture(scope="session")
def _catalogs_built() -> dict[Callable, Path]:
    return {}


@pytest.fixture
def catalog_built_by(catalog_dir: Path, tmp_path_factory, _catalogs_built) -> Callable[[Callable[[CliRun], Any]], None]:
    """`catalog_built_by(build)` gives this test its own copy of the catalog that `build(cli_run)` makes.

    Each builder (a module-level function: the real CLI or API on real rows, its files beside the catalog)
    runs once per session; copying the finished files is what keeps the fast tier fast.
    """

    def give(build: Callable[[CliRun], Any]) -> None:
        if build not in _catalogs_built:
            built = tmp_path_factory.mktemp(build.__name__) / "catalog"
            build(CliRun(built))
            _catalogs_built[build] = built
        shutil.copytree(_catalogs_built[build], catalog_dir)

    return give


@pytest.fixture(scope="session")
def smollm2():
    """(spec, tokenizer, model) of the bundled SmolLM2-135M-Instruct, float32 on CPU."""
    import torch

    from scoring.models import load_model, load_tokenizer, resolve_model

    spec = resolve_model("smollm2-135m")
    return spec, load_tokenizer(spec), load_model(spec, "cpu", torch.float32)


@pytest.fixture(scope="session")
def tiny_llama(smollm2):
    """A randomly initialised 2-layer llama with SmolLM2's vocabulary: fast, and exact enough."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer, _ = smollm2
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()
