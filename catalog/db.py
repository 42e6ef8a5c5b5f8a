"""DuckDB connections through SQLAlchemy: short-lived, retried while another process
holds the file lock, with Arrow in and out through the native driver connection."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from catalog.errors import CatalogBusy


def utcnow() -> datetime:
    """Naive UTC timestamp: every time in the catalog is UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")


def _engine(db_path: Path, read_only: bool) -> sa.Engine:
    return sa.create_engine(
        f"duckdb:///{db_path}",
        poolclass=sa.pool.NullPool,  # close on release, so the file lock goes with it
        connect_args={"read_only": read_only},
    )


@contextmanager
def connect(db_path: Path, *, read_only: bool, busy_timeout: float) -> Iterator[sa.Connection]:
    """Open `db_path` and run the body in one transaction (committed on success).

    Retries for `busy_timeout` seconds while another process holds the file, then raises
    CatalogBusy naming the holder.
    """
    deadline = time.monotonic() + busy_timeout
    engine = _engine(db_path, read_only)
    while True:
        try:
            conn = engine.connect()
            break
        except sa.exc.DBAPIError as error:
            holder = _LOCK_HOLDER.search(str(error))
            if holder is None:
                raise
            if time.monotonic() >= deadline:
                raise CatalogBusy(
                    f"catalog {db_path.parent} is busy: process {holder.group(2)} "
                    f"({Path(holder.group(1)).name}) is writing to it; try again when it finishes"
                ) from None
            time.sleep(0.2)
    try:
        with conn.begin():
            yield conn
    finally:
        conn.close()
        engine.dispose()


def raw(conn: sa.Connection) -> Any:
    """The native duckdb connection under `conn` (same transaction)."""
    return conn.connection.driver_connection


@contextmanager
def registered(conn: sa.Connection, name: str, rows: pa.Table) -> Iterator[None]:
    """Make the Arrow table `rows` queryable as `name` on `conn` for the block."""
    native = raw(conn)
    native.register(name, rows)
    try:
        yield
    finally:
        native.unregister(name)


def insert_arrow(conn: sa.Connection, table: str, rows: pa.Table, keep_existing: bool = False) -> int:
    """INSERT the Arrow table `rows` into `table` (columns by name); returns the row count.

    With `keep_existing`, rows whose key is already there are skipped (ON CONFLICT DO NOTHING).
    """
    cols = ", ".join(rows.column_names)
    conflict = " ON CONFLICT DO NOTHING" if keep_existing else ""
    with registered(conn, "_arrow_rows", rows):
        return raw(conn).execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _arrow_rows{conflict}").fetchone()[0]


def next_id(conn: sa.Connection, table: str, column: str) -> int:
    """The next integer id of `table` (ids are assigned by the single writer, inside its transaction)."""
    return execute(conn, f"SELECT coalesce(max({column}), 0) + 1 FROM {table}")[0][0]


def execute(conn: sa.Connection, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Run `sql` (named $params) on the native connection and fetch all rows."""
    return raw(conn).execute(sql, params or {}).fetchall()


def query_arrow(conn: sa.Connection, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Run `sql` (named $params) and return the result as an Arrow table."""
    return raw(conn).sql(sql, params=params or {}).to_arrow_table()


def records(conn: sa.Connection, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run `sql` (named $params) and return its rows as dicts."""
    return query_arrow(conn, sql, params).to_pylist()
