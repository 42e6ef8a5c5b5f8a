"""Read-only SQL over the catalog's public views, for the `sql` command (and `select --where`).

What makes it read-only is the connection: Catalog.read() opens DuckDB read-only and
sandboxed (no file but the catalog can be read or written, settings locked). The statement
type check only turns the common mistakes (INSERT, COPY, ...) into a friendly message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import numpy as np
import pyarrow as pa

from catalog import db
from catalog.errors import ArgumentError, UserError
from catalog.store import Catalog

# MULTI is what DuckDB calls a PIVOT (it plans it as several steps); nothing it runs can write here.
READ_ONLY = ("SELECT", "EXPLAIN", "MULTI")
MAX_TIMEOUT = 7 * 24 * 3600.0  # a week; a timer cannot wait for inf (or 1e10) seconds


def run_query(catalog: Catalog, sql: str, timeout: float | None = None) -> pa.Table:
    """Run one read-only statement (SELECT, WITH ... SELECT, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE, PIVOT).

    Statements of any other kind (INSERT, COPY, ATTACH, ...) are refused before they run.
    The query is stopped after `timeout` seconds (UserError), and by Ctrl-C (KeyboardInterrupt).
    """
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
        raise ArgumentError(
            f"{{0}} must be a positive number of seconds, at most {MAX_TIMEOUT:g}", "timeout", detail=f"got {timeout:g}"
        )
    with catalog.read() as conn:
        return run_read_only(conn, sql, timeout=timeout)


def run_read_only(conn, sql: str, allowed: tuple[str, ...] = READ_ONLY, timeout: float | None = None) -> pa.Table:
    """Run `sql` on `conn` if it is exactly one statement of an `allowed` kind; UserError otherwise."""
    native = db.raw(conn)
    try:
        statements = native.extract_statements(sql)
    except duckdb.Error as error:
        raise UserError(f"cannot parse the query: {first_line(error)}") from None
    if len(statements) != 1:
        raise UserError(f"expected exactly one SQL statement; got {len(statements)}")
    kind = statements[0].type.name
    if kind not in allowed:
        raise UserError(
            f"read-only: {kind} statements are refused. The catalog changes only through "
            "ingest, embed, neighbours, score and select"
        )
    with _stopped_after(native, timeout) as timed_out:
        try:
            return native.sql(sql).to_arrow_table()
        except duckdb.InterruptException:
            if timed_out.is_set():
                raise UserError(f"query stopped after {timeout:g} s (--timeout)") from None
            raise  # Ctrl-C: the connection (db.connect) makes it a KeyboardInterrupt
        except duckdb.PermissionException as error:
            raise UserError(f"query refused: {first_line(error)} (`sql` reads only the catalog)") from None
        except duckdb.Error as error:
            raise UserError(f"query failed: {first_line(error)}") from None


@contextmanager
def _stopped_after(native, timeout: float | None) -> Iterator[threading.Event]:
    """Interrupt the query running on `native` after `timeout` seconds; the event says it fired."""
    timed_out = threading.Event()
    if timeout is None:
        yield timed_out
        return

    def stop() -> None:
        timed_out.set()
        native.interrupt()

    timer = threading.Timer(timeout, stop)
    timer.start()
    try:
        yield timed_out
    finally:
        timer.cancel()


def one_condition(text: str) -> str:
    """`text` when it is one SQL expression that can stand inside the parentheses a caller puts
    around it (`... AND (text)`); UserError saying why not.

    Checked on DuckDB's own tokens, before anything is spliced: a parenthesis that closes one it
    did not open, a `;`, a comment, or a string or quoted name that is never closed could end the
    caller's parentheses or statement, so any of them is refused whatever the rest says.
    """
    if not text.strip():
        raise UserError("it is empty")
    data = text.encode()  # token positions count bytes
    tokens = duckdb.tokenize(text)
    ends = [start for start, _ in tokens[1:]] + [len(data)]
    depth = 0
    for (start, kind), end in zip(tokens, ends, strict=True):
        piece = data[start:end].decode().strip()
        if kind == duckdb.token_type.comment:
            raise UserError("it holds a comment (-- or /* */); remove it")
        if kind != duckdb.token_type.operator:
            continue
        if piece == ";":
            raise UserError("it holds a ; (one condition, not statements)")
        depth += {"(": 1, ")": -1}.get(piece, 0)
        if depth < 0:
            raise UserError("a ) closes a parenthesis it did not open")
    if depth or duckdb.tokenize(f"({text}\n)")[-1] != (len(data) + 2, duckdb.token_type.operator):
        raise UserError("a parenthesis, string or quoted name in it is never closed")
    return text


def matching_ids(conn, where: str) -> np.ndarray:
    """Sorted ids of the current samples matching `where`, one condition on the `samples` view, run
    through `conn` (a read-only, sandboxed connection); ArgumentError naming `where` otherwise."""
    try:
        table = run_read_only(conn, f"SELECT sample_id FROM samples WHERE ({one_condition(where)})", ("SELECT",))
    except UserError as error:
        raise ArgumentError("{0} is not one SQL condition on the `samples` view", "where", detail=str(error)) from None
    return np.unique(table["sample_id"].to_numpy().astype(np.int64))


def first_line(error: Exception) -> str:
    return " ".join(str(error).split("\n")[:3]).strip()
