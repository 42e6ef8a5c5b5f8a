"""Progress bars on stderr for long work (rich); quiet for small jobs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
_console = Console(stderr=True)


def bar(*extra_columns) -> Progress:
    """A progress bar: description, bar, n/total, %, elapsed, remaining, then `extra_columns`."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=_console,
        transient=False,
    )


def track(items: Iterable[T], total: int, description: str, min_total: int = 5000) -> Iterator[T]:
    """Iterate `items`, showing a bar when there are at least `min_total` of them."""
    if total < min_total:
        yield from items
        return
    with bar() as progress:
        task = progress.add_task(description, total=total)
        for done, item in enumerate(items, start=1):
            yield item
            if done % 1000 == 0 or done == total:
                progress.update(task, completed=done)
