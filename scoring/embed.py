"""The embed step: vectors for every sample that lacks one for the chosen embedder."""

from __future__ import annotations

import time
from dataclasses import dataclass

from catalog import Catalog
from catalog.embeddings import EmbedderRow, lookup_embedder, register_embedder, samples_to_embed
from catalog.progress import Meter
from scoring.embedder import Embedder, resolve_embedder

WRITE_EVERY = 256  # texts per LanceDB append: a crash loses at most this many


@dataclass(frozen=True)
class EmbedResult:
    embedder: EmbedderRow
    embedded: int  # vectors written by this run
    total: int  # vectors the embedder now has
    seconds: float


def embed_missing(
    catalog: Catalog, embedder: str = "minilm", pooling: str = "mean", device: str = "auto", batch_size: int = 16
) -> EmbedResult:
    """Embed the user text of every sample without a vector from `embedder`.

    Args:
        catalog: the catalog (must exist).
        embedder: an alias (`minilm`) or a local sentence-transformers / HF model folder.
        pooling: how token vectors become one vector: mean (default, as the paper), cls or max.
        device: "auto" (CUDA when present), "cpu", "cuda", ...
        batch_size: texts per forward pass.
    """
    started = time.monotonic()
    catalog.require()
    spec = resolve_embedder(embedder, pooling)
    with catalog.job("embed"):
        row = lookup_embedder(catalog, spec.fingerprint, spec.pooling)
        if row is not None:
            embedded = row.vectors(catalog).ids()
            ids, texts = samples_to_embed(catalog, embedded)
            if not len(ids):
                return EmbedResult(row, 0, len(embedded), time.monotonic() - started)
        model = Embedder(spec, device, batch_size)
        if row is None:
            row = register_embedder(
                catalog,
                spec.name,
                str(spec.path),
                model.dimension,
                spec.pooling,
                spec.fingerprint,
                model.max_seq_length,
            )
            ids, texts = samples_to_embed(catalog, row.vectors(catalog).ids())
        vectors = row.vectors(catalog)
        with Meter(f"embedding ({row.name})", len(ids), "texts") as meter:
            for start in range(0, len(ids), WRITE_EVERY):
                chunk = slice(start, start + WRITE_EVERY)
                vectors.add(ids[chunk], model.encode(texts[chunk]))
                meter.advance(len(ids[chunk]))
        vectors.compact()
        return EmbedResult(row, len(ids), len(vectors.ids()), time.monotonic() - started)
