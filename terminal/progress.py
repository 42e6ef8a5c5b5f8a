"""Progress bars on stderr for long work (rich), with throughput; quiet for small jobs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from terminal.render import visible

T = TypeVar("T")
_console = Console(stderr=True)


class _Rate(ProgressColumn):
    """Average rate since the start: of the bar's own count, or of a counted field."""

    def __init__(self, unit: str, field: str | None = None) -> None:
        super().__init__()
        self.unit, self.field = unit, field

    def render(self, task) -> Text:
        done = task.completed if self.field is None else task.fields.get(self.field, 0)
        elapsed = task.elapsed or 0.0
        return Text(f"{done / elapsed:,.1f} {self.unit}/s" if elapsed > 0 else f"- {self.unit}/s", style="cyan")


class Meter:
    """A progress bar counting `unit`s (and optionally a second quantity), with their rates.

    with Meter("scoring", total=n, unit="samples", second_unit="tokens") as meter:
        meter.advance(len(batch), second=n_tokens)
    """

    def __init__(
        self, description: str, total: int, unit: str, second_unit: str | None = None, enabled: bool = True
    ) -> None:
        columns = [
            TextColumn("{task.description}", markup=False),  # it may name a user's file: shown, not obeyed
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            _Rate(unit),
        ]
        if second_unit:
            columns.append(_Rate(second_unit, field="second"))
        self._progress = Progress(*columns, console=_console, disable=not enabled)
        self._task = self._progress.add_task(visible(description), total=total, second=0)

    def __enter__(self) -> Meter:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, n: int, second: int = 0) -> None:
        task = self._progress.tasks[0]
        self._progress.update(self._task, advance=n, second=task.fields["second"] + second)


def track(items: Iterable[T], total: int, description: str, min_total: int = 5000) -> Iterator[T]:
    """Iterate `items`, showing a bar when there are at least `min_total` of them."""
    with Meter(description, total, "rows", enabled=total >= min_total) as meter:
        for done, item in enumerate(items, start=1):
            yield item
            if done % 1000 == 0 or done == total:
                meter.advance(1000 if done % 1000 == 0 else done % 1000)
