"""Read-only SQL over the catalog's public views, for the `sql` command."""

from __future__ import annotations

import pyarrow as pa

from catalog import db
from catalog.errors import UserError
from catalog.store import Catalog

READ_ONLY = ("SELECT", "EXPLAIN")


def run_query(catalog: Catalog, sql: str) -> pa.Table:
    """Run one read-only statement (SELECT, WITH ... SELECT, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE).

    The catalog is opened read-only, and statements of any other kind (INSERT, COPY,
    ATTACH, ...) are refused before they run.
    """
    with catalog.read() as conn:
        return run_read_only(conn, sql)


def run_read_only(conn, sql: str, allowed: tuple[str, ...] = READ_ONLY) -> pa.Table:
    """Run `sql` on `conn` if it is exactly one statement of an `allowed` kind; UserError otherwise."""
    native = db.raw(conn)
    try:
        statements = native.extract_statements(sql)
    except Exception as error:  # duckdb raises ParserException subclasses of its own Error
        raise UserError(f"cannot parse the query: {first_line(error)}") from None
    if len(statements) != 1:
        raise UserError(f"expected exactly one SQL statement; got {len(statements)}")
    kind = statements[0].type.name
    if kind not in allowed:
        raise UserError(
            f"read-only: {kind} statements are refused. The catalog changes only through "
            "ingest, embed, neighbours, score and select"
        )
    try:
        return native.sql(sql).to_arrow_table()
    except Exception as error:
        raise UserError(f"query failed: {first_line(error)}") from None


def first_line(error: Exception) -> str:
    return " ".join(str(error).split("\n")[:3]).strip()
