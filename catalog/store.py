"""The catalog directory: DuckDB tables in catalog.duckdb, LanceDB vectors under vectors/.

A Catalog is a cheap handle. Every read or write opens a short DuckDB connection, so a
long job (embedding, scoring) never keeps `status` or `sql` out for more than a batch write.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from catalog import db, migrate
from catalog.choices import DEFAULT_CATALOG
from catalog.errors import CatalogBusy, UserError

DEFAULT_PATH = DEFAULT_CATALOG


class Catalog:
    """A catalog directory.

    Args:
        path: the directory (created by the first write).
        busy_timeout: seconds to wait for another process's lock before giving up
            (default: env MIWV_BUSY_TIMEOUT, else 10).
    """

    def __init__(self, path: str | os.PathLike, busy_timeout: float | None = None) -> None:
        self.path = Path(path)
        if self.path.resolve() == Path(__file__).resolve().parent:
            raise UserError(f"{self.path} is the catalog source package; choose another --catalog directory")
        self.busy_timeout = (
            busy_timeout if busy_timeout is not None else float(os.environ.get("MIWV_BUSY_TIMEOUT", "10"))
        )
        self._schema_checked = False

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

        Creates the catalog on first use and applies pending migrations.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with db.connect(self.db_path, read_only=False, busy_timeout=self.busy_timeout) as conn:
            if not self._schema_checked:
                revision = migrate.current_revision(conn)
                migrate.check_known(revision, self.path)
                if revision != migrate.head_revision():
                    migrate.upgrade(conn)
                self._schema_checked = True
            yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """One read-only connection; a catalog at an older revision is upgraded first."""
        self.require()
        if not self._schema_checked:
            with db.connect(self.db_path, read_only=True, busy_timeout=self.busy_timeout) as conn:
                revision = migrate.current_revision(conn)
            migrate.check_known(revision, self.path)
            if revision != migrate.head_revision():
                with self.write():
                    pass
            self._schema_checked = True
        with db.connect(self.db_path, read_only=True, busy_timeout=self.busy_timeout) as conn:
            yield conn

    @contextmanager
    def job(self, name: str) -> Iterator[None]:
        """Hold the catalog's job lock so two long jobs never run on one catalog at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / "job.lock"
        with open(lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another job"
                raise CatalogBusy(
                    f"catalog {self.path} is busy: {holder} is running on it; wait for it to finish"
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
