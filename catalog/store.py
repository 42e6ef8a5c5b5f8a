"""The catalog directory: DuckDB tables in catalog.duckdb, LanceDB vectors under vectors/.

A Catalog is a cheap handle. Every read or write opens a short DuckDB connection, so a
long job (embedding, scoring) never keeps `status` or `sql` out for more than a batch write.
Reads never change the file: a database without this tool's schema revision is refused, and
one at an older revision is upgraded only by a handle made with `auto_upgrade=True` (the
write commands) or by `upgrade()`.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from catalog import db, migrate
from catalog.choices import DEFAULT_CATALOG
from catalog.errors import CatalogBusy, StorageError, UserError

DEFAULT_PATH = DEFAULT_CATALOG
BUSY_TIMEOUT_ENV = "MIWV_BUSY_TIMEOUT"
_JOB_HOLDER = re.compile(r"`(.*)` \(pid (\d+)\)")


class Catalog:
    """A catalog directory.

    Args:
        path: the directory (created by the first write).
        busy_timeout: seconds to wait for another process's lock before giving up
            (default: env MIWV_BUSY_TIMEOUT, else 10).
        auto_upgrade: whether a read of a catalog at an older schema revision upgrades it
            first (else it is refused with "run upgrade"); writes always upgrade.
    """

    def __init__(self, path: str | os.PathLike, busy_timeout: float | None = None, auto_upgrade: bool = True) -> None:
        self.path = Path(path)
        if self.path.resolve() == Path(__file__).resolve().parent:
            raise UserError(f"{self.path} is the catalog source package; choose another --catalog directory")
        self._busy_timeout = busy_timeout
        self.auto_upgrade = auto_upgrade
        self._schema_checked = False

    @property
    def busy_timeout(self) -> float:
        """Seconds to wait for a lock: the constructor's value, else MIWV_BUSY_TIMEOUT, else 10."""
        if self._busy_timeout is not None:
            return self._busy_timeout
        text = os.environ.get(BUSY_TIMEOUT_ENV, "10")
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not seconds >= 0:
            raise UserError(f"{BUSY_TIMEOUT_ENV}={text!r} is not a number of seconds (>= 0); fix or unset it")
        return seconds

    @property
    def db_path(self) -> Path:
        return self.path / "catalog.duckdb"

    @property
    def vectors_path(self) -> Path:
        return self.path / "vectors"

    def exists(self) -> bool:
        return self.db_path.exists()

    def require(self) -> None:
        """Raise a UserError naming the path when there is no catalog there yet."""
        if not self.exists():
            raise UserError(
                f"no catalog at {self.path}: ingest a file first "
                f"(python cli.py --catalog {self.path} ingest FILE --dataset NAME)"
            )

    @contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """One write transaction, committed when the block ends without error.

        Creates the catalog on first use and applies pending migrations. While another process
        holds the file it retries for `busy_timeout` seconds, then raises CatalogBusy (a long job
        retries that itself: scoring.commits).
        """
        if not self._schema_checked and self.exists():
            self._stored_revision()  # refuses a foreign database before opening it for writing
        _make_dir(self.path)
        with db.connect(self.db_path, read_only=False, busy_timeout=self.busy_timeout) as conn:
            if not self._schema_checked:
                if self._revision(conn) != migrate.head_revision():
                    migrate.upgrade(conn)
                self._schema_checked = True
            yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """One read-only, sandboxed connection (DuckDB may touch no file but the catalog)."""
        self.require()
        with db.connect(self.db_path, read_only=True, busy_timeout=self.busy_timeout) as conn:
            revision = migrate.head_revision() if self._schema_checked else self._revision(conn)
            if revision == migrate.head_revision():
                self._schema_checked = True
                yield conn
                return
        # An old schema: write commands upgrade it, read commands ask for `upgrade`.
        if not self.auto_upgrade:
            raise UserError(self._needs_upgrade(revision))
        self.upgrade()
        with db.connect(self.db_path, read_only=True, busy_timeout=self.busy_timeout) as conn:
            yield conn

    def upgrade(self) -> str:
        """Bring an existing catalog to the newest schema revision; returns it."""
        self.require()
        with self.write():
            pass
        return migrate.head_revision()

    def _stored_revision(self) -> str | None:
        with db.connect(self.db_path, read_only=True, busy_timeout=self.busy_timeout) as conn:
            return self._revision(conn)

    def _revision(self, conn: sa.Connection) -> str | None:
        """The schema revision; refuses a database that is not empty and not a catalog, or too new."""
        revision = migrate.current_revision(conn)
        if revision is None:
            found = migrate.objects(conn)
            if found:
                raise UserError(
                    f"{self.db_path} is not a miwv catalog (it holds {', '.join(found[:5])} and no schema "
                    "revision); it is left untouched: choose another --catalog directory"
                )
        migrate.check_known(revision, self.path)
        return revision

    def _needs_upgrade(self, revision: str | None) -> str:
        if revision is None:
            return f"catalog {self.path} is empty: ingest a file first"
        return (
            f"catalog {self.path} is at schema revision {revision} (this version writes {migrate.head_revision()}); "
            f"run `python cli.py --catalog {self.path} upgrade` first (this command only reads)"
        )

    @contextmanager
    def job(self, name: str) -> Iterator[None]:
        """Hold the catalog's job lock so two long jobs never run on one catalog at once."""
        _make_dir(self.path)
        lock_path = self.path / "job.lock"
        try:
            handle = open(lock_path, "a+")
        except OSError as error:
            raise StorageError(f"cannot open the job lock {lock_path}: {error.strerror}; {_WRITABLE}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                text = handle.read().strip()
                holder = _JOB_HOLDER.fullmatch(text)
                raise CatalogBusy(
                    f"catalog {self.path} is busy: {text or 'another job'} is running on it; wait for it to finish",
                    pid=int(holder.group(2)) if holder else None,
                    role="job",
                    command=holder.group(1) if holder else None,
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"`{name}` (pid {os.getpid()})")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)


_WRITABLE = "make the catalog folder writable, or use another --catalog"


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create the catalog folder {path}: {error.strerror}; {_WRITABLE}") from None
