"""What the catalog holds: samples per dataset, ingest batches, embeddings and neighbour links."""

from __future__ import annotations

from typing import Any

from catalog import db
from catalog.embeddings import embedders
from catalog.store import Catalog


def catalog_status(catalog: Catalog) -> dict[str, Any]:
    """A JSON-able summary of the catalog."""
    embedded = {e.embedder_id: len(e.vectors(catalog).ids()) for e in embedders(catalog)}
    with catalog.read() as conn:
        return {
            "catalog": str(catalog.path.resolve()),
            "samples": db.execute(conn, "SELECT count(*) FROM sample")[0][0],
            "datasets": _records(conn, """
                SELECT dataset, count(*) AS samples, count(*) FILTER (WHERE exclusive) AS only_here
                FROM (SELECT dataset, count(*) OVER (PARTITION BY sample_id) = 1 AS exclusive FROM membership)
                GROUP BY dataset ORDER BY dataset"""),
            "ingests": _records(conn, """
                SELECT ingest_id, dataset, path, parse_filename(path) AS file, record_shape, rows_read, rows_new, rows_duplicate, rows_rejected,
                       strftime(finished_at, '%Y-%m-%d %H:%M:%S') AS finished_at
                FROM ingest_batch ORDER BY ingest_id"""),
            "embedders": [{**row, "embedded": embedded[row["embedder_id"]],
                           "not_linked": embedded[row["embedder_id"]] - row["linked"] - row["without_neighbour"]}
                          for row in _records(conn, """
                SELECT e.embedder_id, e.name, e.pooling, e.dimension,
                       count(l.neighbour_id) AS linked,
                       count(l.sample_id) - count(l.neighbour_id) AS without_neighbour,
                       (SELECT count(*) FROM neighbour_link c WHERE c.embedder_id = e.embedder_id
                          AND c.run_id = (SELECT max(run_id) FROM neighbour_run r WHERE r.embedder_id = e.embedder_id)
                       ) AS changed_in_last_run
                FROM embedder e LEFT JOIN neighbour_link l USING (embedder_id)
                GROUP BY ALL ORDER BY e.embedder_id""")],
        }


def _records(conn, sql: str) -> list[dict[str, Any]]:
    return db.query_arrow(conn, sql).to_pylist()
