"""What the catalog holds: samples per dataset and the ingest batches."""

from __future__ import annotations

from typing import Any

from catalog import db
from catalog.store import Catalog


def catalog_status(catalog: Catalog) -> dict[str, Any]:
    """A JSON-able summary of the catalog."""
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
        }


def _records(conn, sql: str) -> list[dict[str, Any]]:
    return db.query_arrow(conn, sql).to_pylist()
