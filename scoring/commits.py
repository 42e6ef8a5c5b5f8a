"""Commits a long job's results patiently, on a writer thread.

DuckDB lets one process write only while no other process has the file open, so a long
read-only `sql` query, or a page being served, holds every writer off. A job must not die
or lose work for that: its writes are retried until the catalog is free, the finished
results wait in memory meanwhile (a bounded queue: when it is full, compute waits), and
every `report_every` seconds stderr says whom the job is waiting for.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from catalog.errors import CatalogBusy

T = TypeVar("T")

REPORT_EVERY = 30.0  # seconds between "waiting for the catalog" lines
MAX_QUEUED = 16  # writes held in memory while the catalog is busy; then compute waits


def patiently(write: Callable[[], T], held: Callable[[], int] = lambda: 0, report_every: float = REPORT_EVERY) -> T:
    """Run `write` (one transaction) until it gets the catalog; each try itself waits the catalog's
    busy timeout. Says on stderr whom it waits for at once, then every `report_every` seconds;
    `held` counts the results kept meanwhile, for that line."""
    last_report = None
    while True:
        try:
            return write()
        except CatalogBusy as busy:
            now = time.monotonic()
            if last_report is None or now - last_report >= report_every:
                print(
                    f"waiting for the catalog ({busy}); {held() + 1} results kept in memory, compute continues",
                    file=sys.stderr,
                    flush=True,
                )
                last_report = now
            time.sleep(0.2)


class PatientWriter:
    """Runs submitted writes in order on one thread, each through `patiently`. Leaving the block
    waits for every queued write (also on Ctrl-C), so no finished result is lost; a write that
    fails for another reason is raised by the next submit or at the end.

    DuckDB refuses a read-only and a read-write connection to one file open at once in one
    process, so the job's own reads go through `read`, which takes turns with the writes.
    """

    def __init__(self, max_queued: int = MAX_QUEUED, report_every: float = REPORT_EVERY) -> None:
        self.report_every = report_every
        self.turn = threading.Lock()
        self.queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max_queued)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="catalog-writer", daemon=True)
        self.thread.start()

    def __enter__(self) -> PatientWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error

    def submit(self, write: Callable[[], None]) -> None:
        """Queue `write`; blocks while the queue is full (the catalog has been busy for a while)."""
        if self.error is not None:
            raise self.error
        self.queue.put(write)

    def read(self, read: Callable[[], T]) -> T:
        """Run `read` (one read-only transaction) between two writes."""
        return patiently(lambda: self._in_turn(read), self.queue.qsize, self.report_every)

    def _in_turn(self, action: Callable[[], T]) -> T:
        with self.turn:
            return action()

    def _drain(self) -> None:
        while (write := self.queue.get()) is not None:
            if self.error is None:
                try:
                    patiently(lambda w=write: self._in_turn(w), self.queue.qsize, self.report_every)
                except BaseException as error:  # surfaced in the caller's thread
                    self.error = error
