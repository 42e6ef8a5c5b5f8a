"""Read-only SQL over the catalog's public views, for the `sql` command (and `select --where`).

What makes it read-only is the connection: Catalog.read() opens DuckDB read-only and
sandboxed (no file but the catalog can be read or written, settings locked). The statement
type check only turns the common mistakes (INSERT, COPY, ...) into a friendly message.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb
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
    with _interruptible(native, timeout) as stop:
        try:
            return native.sql(sql).to_arrow_table()
        except (duckdb.InterruptException, RuntimeError):
            # DuckDB raises InterruptException for interrupt(), but RuntimeError("Query interrupted") when it
            # sees the signal itself; `stop` says which of ours it was, and anything else is not ours.
            if stop.timed_out.is_set():
                raise UserError(f"query stopped after {timeout:g} s (--timeout)") from None
            if stop.signalled.is_set():
                raise KeyboardInterrupt from None
            raise
        except duckdb.PermissionException as error:
            raise UserError(f"query refused: {first_line(error)} (`sql` reads only the catalog)") from None
        except duckdb.Error as error:
            raise UserError(f"query failed: {first_line(error)}") from None


@dataclass
class _Stop:
    """Why a running query was interrupted: its timeout, or Ctrl-C (SIGINT)."""

    timed_out: threading.Event = field(default_factory=threading.Event)
    signalled: threading.Event = field(default_factory=threading.Event)


@contextmanager
def _interruptible(native, timeout: float | None) -> Iterator[_Stop]:
    """Let a timer (after `timeout` s) and Ctrl-C interrupt the query running on `native`; the
    yielded _Stop says which did, set before the query is interrupted.

    DuckDB may run the query without returning to Python, so a Python signal handler could wait
    for it; a signal still writes to the wakeup fd at once, and a watcher thread interrupts DuckDB.
    Where DuckDB does check for signals, the handler below runs and interrupts it the same way.
    """
    stop = _Stop()

    def interrupt(reason: threading.Event) -> None:
        reason.set()
        native.interrupt()

    timer = threading.Timer(timeout, interrupt, args=(stop.timed_out,)) if timeout is not None else None
    watch = threading.current_thread() is threading.main_thread()
    if watch:
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        previous_fd = signal.set_wakeup_fd(write_end)
        previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupt(stop.signalled))
        watcher = threading.Thread(target=_interrupt_on_signal, args=(read_end, stop, interrupt), daemon=True)
        watcher.start()
    if timer is not None:
        timer.start()
    try:
        yield stop
    finally:
        if timer is not None:
            timer.cancel()
        if watch:
            signal.signal(signal.SIGINT, previous_handler)
            signal.set_wakeup_fd(previous_fd)
            os.close(write_end)  # the watcher reads end-of-file and returns
            watcher.join()
            os.close(read_end)


def _interrupt_on_signal(read_end: int, stop: _Stop, interrupt: Callable[[threading.Event], None]) -> None:
    while os.read(read_end, 1):
        interrupt(stop.signalled)


def first_line(error: Exception) -> str:
    return " ".join(str(error).split("\n")[:3]).strip()
