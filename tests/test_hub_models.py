"""Models from the Hugging Face Hub: taken from the local HF cache when there, downloaded when
missing and online, a clear message when missing and offline. Each case runs in a subprocess
with its own HF_HOME (huggingface_hub reads it at import) holding a real cache layout; the Hub
endpoint points at a closed local port, so "online" here means: it tried the Hub."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # every test resolves a model in a fresh Python process (transformers imported)

CLOSED_PORT = "http://127.0.0.1:9"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = """
import sys
from catalog.errors import UserError
from scoring.models import load_tokenizer, resolve_model
try:
    spec = resolve_model(sys.argv[1])
    print("path", spec.path, "source", spec.source, "vocab", len(load_tokenizer(spec)))
except UserError as error:
    print("Error:", error)
"""


def put_in_hub_cache(hf_home: Path, repo_id: str, folder: Path, names: list[str]) -> Path:
    """Place `folder`'s files (`names`: relative paths) as the HF cache does: content-addressed blobs, a
    snapshot of symlinks, refs/main."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name in names:
        data = (folder / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)  # e.g. 1_Pooling/config.json
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    return snapshot


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_llama, smollm2) -> tuple[Path, list[str]]:
    """A real (tiny, random) llama saved as safetensors with SmolLM2's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama.save_pretrained(folder)
    smollm2[1].save_pretrained(folder)
    return folder, sorted(p.name for p in folder.iterdir())


def resolve(name: str, hf_home: Path, offline: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_HOME": str(hf_home), "HF_ENDPOINT": CLOSED_PORT, "PYTHONPATH": str(REPO)}
    env |= {"HF_HUB_OFFLINE": "1"} if offline else {}
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE, name], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("offline", [False, True])
def test_a_model_in_the_local_cache_is_used_without_the_hub(tmp_path, tiny_model, offline):
    folder, names = tiny_model
    snapshot = put_in_hub_cache(tmp_path, "tiny-org/tiny-llama", folder, names)
    assert (
        resolve("tiny-org/tiny-llama", tmp_path, offline) == f"path {snapshot} source tiny-org/tiny-llama vocab 49152"
    )


def test_online_a_missing_model_is_downloaded_from_the_hub(tmp_path):
    out = resolve("tiny-org/not-here", tmp_path, offline=False)
    assert out.startswith(f"Error: could not download tiny-org/not-here from the Hugging Face Hub ({CLOSED_PORT})")
    assert str(tmp_path / "hub") in out


def test_online_a_cached_model_without_weights_goes_to_the_hub(tmp_path, tiny_model):
    folder, names = tiny_model
    put_in_hub_cache(tmp_path, "tiny-org/tiny-llama", folder, [n for n in names if not n.endswith(".safetensors")])
    out = resolve("tiny-org/tiny-llama", tmp_path, offline=False)
    assert out.startswith("Error: tiny-org/tiny-llama has no config.json and .safetensors weights in")
    assert f"the Hugging Face Hub ({CLOSED_PORT}) did not supply them" in out


@pytest.mark.parametrize("name", ["qwen2.5-7b", "Qwen/Qwen2.5-7B"])
def test_offline_a_missing_model_says_where_it_looked(tmp_path, name):
    out = resolve(name, tmp_path, offline=True)
    assert out == (
        f"Error: Qwen/Qwen2.5-7B is not in the local Hugging Face cache ({tmp_path / 'hub'}); download it there "
        "(hf download Qwen/Qwen2.5-7B), unset HF_HUB_OFFLINE to let `score` download it, "
        "or pass --model /path/to/its/folder"
    )


def test_listing_aliases_never_downloads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_HOME": str(tmp_path), "HF_ENDPOINT": CLOSED_PORT, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "cli.py", "models"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "is not in the local Hugging Face cache" in done.stdout and "could not download" not in done.stdout
