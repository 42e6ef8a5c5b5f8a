"""How the catalog changed, for people: a removal (or its dry run) and the datasets' history.

Dataset names and conditions come from the user: every line goes through render's visible(), so
none of them can steer the terminal. --json prints the results' as_dict() instead.
"""

from __future__ import annotations

import sys
from typing import Any

from terminal.render import print_rows, visible

HISTORY_COLUMNS = ["dataset", "version", "kind", "rows_in", "rows_out", "members", "detail", "created_at", "change_id"]


def _line(text: str) -> None:
    sys.stdout.write(visible(text) + "\n")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def print_removal(result) -> None:
    """What a removal did, or with --dry-run would do; then what to run next."""
    if result.message:
        _line(result.message)
        return
    if result.dry_run:
        _line("dry run: what this removal would change")
    else:
        _line(f"change {result.change_id}: removed in {result.seconds:.2f} s")
    for effect in result.datasets:
        version = f", now version {effect['version']}" if effect["version"] is not None else ""
        _line(
            f"  dataset {effect['dataset']!r}: {_count(effect['rows_out'], 'membership')} out, "
            f"{effect['members_after']} members after{version}"
        )
    _line(f"  samples retired (in no dataset any more): {result.samples_retired}")
    _line(f"  links to repair (their nearest neighbour was retired): {result.links_to_repair}")
    _line(f"  scores made stale (until `score` runs their new one-shot pass): {result.scores_stale}")
    _line(f"  samples purged (text, vectors, losses deleted for good): {result.samples_purged}")
    if result.dry_run:
        _line("nothing was written; run the same command without --dry-run to do it")
    elif result.links_to_repair:
        _line(
            f"next: `python cli.py embed` repairs {_count(result.links_to_repair, 'link')}, "
            "then `python cli.py score --model MODEL` computes the stale scores"
        )


def print_history(rows: list[dict[str, Any]], dataset: str | None) -> None:
    """Dataset versions, oldest first, as a table."""
    if not rows:
        _line("no dataset versions recorded yet: ingest a file first")
        return
    title = f"versions of dataset {dataset} (oldest first)" if dataset else "dataset versions (oldest first)"
    print_rows(rows, title=title, columns=HISTORY_COLUMNS)


def print_pool_changes(selections: list[dict[str, Any]]) -> None:
    """A line under the selections table for each whose pool changed since or whose members left."""
    for row in selections:
        changes = []
        if row.get("pool_changed"):
            changes.append("its pool has changed since (see `history`)")
        if row.get("members_gone"):
            changes.append(f"{_count(row['members_gone'], 'member')} left the catalog (not exported again)")
        if changes:
            _line(f"selection {row['selection_id']}: {'; '.join(changes)}")
