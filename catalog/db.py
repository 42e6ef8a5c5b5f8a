"""DuckDB connections through SQLAlchemy: short-lived, retried while another process
holds the file lock, with Arrow in and out through the native driver connection.

Read-only connections are sandboxed: DuckDB may touch no file but the catalog (no COPY TO,
ATTACH, EXPORT, INSTALL or read_csv('/etc/...'), whatever the statement hides them in), and
their settings are locked, so no query can switch that off.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from catalog.errors import CatalogBusy, StorageError


def utcnow() -> datetime:
    """Naive UTC timestamp: every time in the catalog is UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")
SANDBOX = {"enable_external_access": False, "lock_configuration": True}


def _engine(db_path: Path, read_only: bool) -> sa.Engine:
    connect_args: dict[str, Any] = {"read_only": read_only}
    if read_only:
        connect_args["config"] = dict(SANDBOX)
    return sa.create_engine(
        f"duckdb:///{db_path}",
        poolclass=sa.pool.NullPool,  # close on release, so the file lock goes with it
        connect_args=connect_args,
    )


@contextmanager
def connect(
    db_path: Path,
    *,
    read_only: bool,
    busy_timeout: float,
) -> Iterator[sa.Connection]:
    """Open `db_path` and run the body in one transaction (committed on success).

    Retries for `busy_timeout` seconds while another process holds the file, then raises
    CatalogBusy naming the holder and whether it reads or writes. A disk, permission or
    corruption error of DuckDB becomes a StorageError naming the file.
    """
    engine = _engine(db_path, read_only)
    try:
        conn = _open(engine, db_path, read_only, busy_timeout)
        try:
            with storage_errors(db_path), _ctrl_c_interrupts(raw(conn)), conn.begin():
                yield conn
        finally:
            conn.close()
    finally:
        engine.dispose()


@contextmanager
def _ctrl_c_interrupts(native) -> Iterator[None]:
    """Let Ctrl-C stop the statement running on `native` at once, as a KeyboardInterrupt.

    DuckDB may run a statement without returning to Python, so Python's SIGINT handler would wait
    for it. A signal still writes to the wakeup fd at once: a watcher thread reads it and interrupts
    DuckDB. What DuckDB then raises varies (InterruptException, a RuntimeError, another Error when
    it ran Python's handler itself), and the caller may have reworded it, so the fact is recorded
    instead: a handler notes every SIGINT, and whatever the body raises after one is the Ctrl-C.
    Only the main thread receives signals, so elsewhere (the web server's threads) nothing is watched.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signalled = threading.Event()
    previous_handler = signal.getsignal(signal.SIGINT)

    def note_sigint(signum, frame) -> None:
        signalled.set()
        if callable(previous_handler):
            previous_handler(signum, frame)
        elif previous_handler != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note_sigint)
    stop_watching = _watch_sigint(native, signalled)
    try:
        yield
    except BaseException:
        if signalled.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        stop_watching()
        signal.signal(signal.SIGINT, previous_handler)


def _watch_sigint(native, signalled: threading.Event) -> Callable[[], None]:
    """Start the watcher; returns what stops it."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end)
    watcher = threading.Thread(target=_interrupt_on_sigint, args=(read_end, native, signalled), daemon=True)
    watcher.start()

    def stop() -> None:
        signal.set_wakeup_fd(previous)
        os.close(write_end)  # the watcher reads end-of-file and returns
        watcher.join()
        os.close(read_end)

    return stop


def _interrupt_on_sigint(read_end: int, native, signalled: threading.Event) -> None:
    while received := os.read(read_end, 1):
        if received[0] == signal.SIGINT:
            signalled.set()
            native.interrupt()


def _open(engine: sa.Engine, db_path: Path, read_only: bool, busy_timeout: float) -> sa.Connection:
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            with storage_errors(db_path):
                return engine.connect()
        except _Locked as locked:
            if time.monotonic() >= deadline:
                raise _busy(db_path, read_only, locked.pid) from None
        time.sleep(0.2)


class _Locked(Exception):
    """Another process holds the file's lock (internal: becomes CatalogBusy or a retry)."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.pid = pid


def _busy(db_path: Path, read_only: bool, pid: int) -> CatalogBusy:
    """Who holds the lock: readers share it, so a reader is refused only by a writer."""
    role = "writer" if read_only or not _readers_only(db_path) else "reader"
    command = process_command(pid)
    who = f"process {pid}" + (f" ({command})" if command else "")
    doing = "is reading it" if role == "reader" else "is writing to it"
    return CatalogBusy(
        f"catalog {db_path.parent} is busy: {who} {doing}; try again when it finishes",
        pid=pid,
        role=role,
        command=command,
    )


def _readers_only(db_path: Path) -> bool:
    """True when the file can be opened read-only right now (its holders only read)."""
    try:
        duckdb.connect(str(db_path), read_only=True).close()
    except duckdb.Error:
        return False
    return True


def process_command(pid: int, limit: int = 120) -> str | None:
    """The command line of process `pid` (Linux /proc), shortened to `limit` characters."""
    try:
        raw_args = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    args = [Path(arg).name if i == 0 else arg for i, arg in enumerate(raw_args.decode(errors="replace").split("\0"))]
    text = " ".join(" ".join(arg.split()) for arg in args if arg.strip())  # one line, even for `python -c SCRIPT`
    return text if len(text) <= limit else text[: limit - 3] + "..."


_OS_TROUBLE = ("Could not write", "Could not read", "No space left", "File too large", "Permission denied")


@contextmanager
def storage_errors(db_path: Path) -> Iterator[None]:
    """Turn DuckDB's lock conflicts into _Locked, and its disk, permission and corruption
    errors about `db_path` into one StorageError line that says what to do."""
    try:
        yield
    except (sa.exc.DBAPIError, duckdb.Error) as error:
        native = error.orig if isinstance(error, sa.exc.DBAPIError) else error
        text = str(native)
        holder = _LOCK_HOLDER.search(text)
        if holder is not None:
            raise _Locked(int(holder.group(2))) from None
        if isinstance(native, duckdb.IOException) or any(trouble in text for trouble in _OS_TROUBLE):
            raise StorageError(f"catalog file {db_path}: {_first_line(text)}; {_advice(text)}") from None
        raise


def _advice(text: str) -> str:
    if "too large" in text or "No space" in text:
        return "free disk space and run the command again (nothing of this step was kept)"
    if "Permission" in text or "read-only" in text.lower():
        return "make the catalog folder writable, or use another --catalog"
    return "it is damaged or not a DuckDB file: restore it from a backup or use another --catalog"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def raw(conn: sa.Connection) -> Any:
    """The native duckdb connection under `conn` (same transaction)."""
    return conn.connection.driver_connection


def id_table(sample_ids) -> pa.Table:
    """A one-column Arrow table of sample ids (int64), to register and join against."""
    return pa.table({"sample_id": pa.array(sample_ids, pa.int64())})


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
