"""Embedders registered in the catalog, and which samples still need a vector from each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from catalog import db
from catalog.choices import DEFAULT_EMBEDDER
from catalog.errors import UserError
from catalog.store import Catalog
from catalog.vectors import VectorTable


@dataclass(frozen=True)
class EmbedderRow:
    """An embedder as the catalog records it.

    `path` is where its files came from (a Hub id, else a folder); `text_prefix` what it puts
    before each text (E5's "query: "; None: nothing). An embedder is identified by (fingerprint,
    pooling): the fingerprint covers the files and the prefix (scoring.embed.embedder_identity), so
    the same files with and without a prefix are two embedders with their own vectors.
    """

    embedder_id: int
    name: str
    path: str
    dimension: int
    pooling: str
    fingerprint: str
    max_seq_length: int | None
    text_prefix: str | None = None

    def vectors(self, catalog: Catalog) -> VectorTable:
        return VectorTable(catalog.vectors_path, self.embedder_id, self.dimension)


_COLUMNS = "embedder_id, name, path, dimension, pooling, fingerprint, max_seq_length, text_prefix"


def _by_files(conn, fingerprint: str, pooling: str) -> EmbedderRow | None:
    rows = db.execute(
        conn,
        f"SELECT {_COLUMNS} FROM embedder WHERE fingerprint = $fingerprint AND pooling = $pooling",
        {"fingerprint": fingerprint, "pooling": pooling},
    )
    return EmbedderRow(*rows[0]) if rows else None


def lookup_embedder(catalog: Catalog, fingerprint: str, pooling: str) -> EmbedderRow | None:
    """The embedder with these model files and pooling, if the catalog has one."""
    if not catalog.exists():
        return None
    with catalog.read() as conn:
        return _by_files(conn, fingerprint, pooling)


def register_embedder(
    catalog: Catalog,
    name: str,
    path: str,
    dimension: int,
    pooling: str,
    fingerprint: str,
    max_seq_length: int | None,
    text_prefix: str | None = None,
) -> EmbedderRow:
    """Record an embedder (or return the one with the same fingerprint and pooling: the same files
    and text prefix, see EmbedderRow)."""
    with catalog.write() as conn:
        known = _by_files(conn, fingerprint, pooling)
        if known is not None:
            return known
        embedder_id = db.next_id(conn, "embedder", "embedder_id")
        db.execute(
            conn,
            """INSERT INTO embedder (embedder_id, name, path, dimension, pooling, normalized, max_seq_length,
                                   fingerprint, created_at, text_prefix)
            VALUES ($embedder_id, $name, $path, $dimension, $pooling, true, $max_seq_length, $fingerprint, $now,
                    $text_prefix)""",
            {
                "embedder_id": embedder_id,
                "name": name,
                "path": path,
                "dimension": dimension,
                "pooling": pooling,
                "max_seq_length": max_seq_length,
                "fingerprint": fingerprint,
                "now": db.utcnow(),
                "text_prefix": text_prefix,
            },
        )
    return EmbedderRow(embedder_id, name, path, dimension, pooling, fingerprint, max_seq_length, text_prefix)


def find_embedder(catalog: Catalog, name: str | None = None) -> EmbedderRow:
    """The embedder called `name` (its alias or name, its source path or Hub id, or its embedder_id), else
    the default one, else the only one."""
    rows = embedders(catalog)
    if not rows:
        raise UserError(f"catalog {catalog.path} has no embeddings yet: run `python cli.py embed` first")
    if name is not None:
        matches = [r for r in rows if name in (r.name, r.path, str(r.embedder_id))]
        if not matches:
            raise UserError(f"no embedder {name!r} in the catalog; known: {', '.join(r.name for r in rows)}")
        if len(matches) > 1:
            listing = ", ".join(f"{r.embedder_id} ({r.pooling} pooling)" for r in matches)
            raise UserError(f"embedder {name!r} is registered more than once: {listing}; pass its id")
        return matches[0]
    defaults = [r for r in rows if r.name == DEFAULT_EMBEDDER and r.pooling == "mean"]
    if defaults:
        return defaults[0]
    if len(rows) == 1:
        return rows[0]
    raise UserError(f"the catalog has several embedders ({', '.join(r.name for r in rows)}); pass --embedder")


def samples_to_embed(catalog: Catalog, embedded: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(sample_ids, user texts) of current samples without a vector, shortest text first (a retired
    sample is not searched nor scored: it gets a vector only if an ingest brings it back)."""
    with catalog.read() as conn:
        with db.registered(conn, "embedded", db.id_table(embedded)):
            table = db.query_arrow(
                conn,
                """
                SELECT sample_id, user_text FROM sample
                WHERE sample_id IN (SELECT sample_id FROM membership)
                  AND sample_id NOT IN (SELECT sample_id FROM embedded)
                ORDER BY length(user_text), sample_id""",
            )
    return table["sample_id"].to_numpy(), table["user_text"].to_pylist()


def embedders(catalog: Catalog) -> list[EmbedderRow]:
    """Every registered embedder, oldest first."""
    with catalog.read() as conn:
        return [EmbedderRow(*r) for r in db.execute(conn, f"SELECT {_COLUMNS} FROM embedder ORDER BY embedder_id")]
