"""Terminal output: tables for people, CSV and JSON for scripts.

Catalog data is untrusted (sample text, dataset, file and model names come from the user's
files): the human views print it as rich Text, never as markup, and through visible(), so no
escape sequence, control or bidi character reaches the terminal. CSV and JSON print it as stored.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from datetime import datetime
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table
from rich.text import Text

TABLE_ROWS = 500  # rows shown as a table; --csv/--json print everything
CELL_CHARS = 80
_SHOWN = {"\n": "⏎", "\t": "\\t", "\r": "\\r"}
_HIDDEN = ("Cc", "Cf", "Cs", "Zl", "Zp")  # controls, format (bidi, zero-width), surrogates, line/paragraph separators
_JOINERS = ("\u200c", "\u200d")  # format characters that only join glyphs (emoji, Indic and Arabic scripts)


def visible(text: str) -> str:
    """`text` with each character a terminal would obey, or that reorders or hides what it shows,
    written out: newline as ⏎, the others as Python escapes (\\x1b, \\x9b, \\u202e)."""
    if text.isprintable():
        return text
    return "".join(_visible_char(c) for c in text)


def _visible_char(c: str) -> str:
    if c in _JOINERS or unicodedata.category(c) not in _HIDDEN:
        return c
    return _SHOWN.get(c) or ascii(c)[1:-1]


def _console() -> Console:
    # Built per call: click's CliRunner swaps sys.stdout, and a module-level console would miss it.
    return Console(file=sys.stdout, soft_wrap=False, width=max(Console().width, 160))


def _plain(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _cell(value: Any) -> Text:
    """A table cell: plain text (never markup), control characters shown, cut to CELL_CHARS."""
    text = visible(_plain(value)[: CELL_CHARS + 1])  # one more than fits, so a cut is always marked
    return Text(text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…")


def print_rows(rows: list[dict[str, Any]], title: str | None = None, columns: list[str] | None = None) -> None:
    """Print dicts as a table, first TABLE_ROWS of them."""
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title and Text(visible(title)), title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(Text(visible(column)), overflow="fold")
    for row in rows[:TABLE_ROWS]:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    _console().print(table)
    if len(rows) > TABLE_ROWS:
        _console().print(f"({len(rows) - TABLE_ROWS} more rows; use --csv or --json for all of them)")


def print_arrow(result: pa.Table, output: str) -> None:
    """Print a query result as "table", "csv" or "json" (one JSON object per row)."""
    rows = result.to_pylist()
    if output == "json":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    elif output == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(result.column_names)
        for row in rows:
            writer.writerow([_csv_cell(row[c]) for c in result.column_names])
    else:
        print_rows(rows, columns=result.column_names)
        _console().print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n")


def print_status(status: dict[str, Any]) -> None:
    """The `status` command's human view: one table per section that has rows, then its advice."""
    gone = [f"{status[key]} {key}" for key in ("retired", "purged") if status.get(key)]
    _line(f"catalog {status['catalog']}: {status['samples']} samples" + (f" ({', '.join(gone)})" if gone else ""))
    sections = {
        "datasets": ("datasets (only_here: samples in no other dataset; version: changes of its members)", None),
        "ingests": (
            "ingest batches",
            [
                "ingest_id",
                "dataset",
                "file",
                "record_shape",
                "rows_read",
                "rows_new",
                "rows_duplicate",
                "rows_rejected",
                "finished_at",
            ],
        ),
        "embedders": (
            "embedders (linked: has a nearest neighbour; changed_in_last_run: links the last neighbour run wrote)",
            [
                "embedder_id",
                "name",
                "pooling",
                "dimension",
                "embedded",
                "linked",
                "without_neighbour",
                "not_linked",
                "changed_in_last_run",
            ],
        ),
        "scores": (
            "scores per model (scored: MIWV defined; stale: scored with an earlier neighbour; unscored: not yet)",
            None,
        ),
    }
    for key, (title, columns) in sections.items():
        if status.get(key):
            print_rows(status[key], title=title, columns=columns)
    for advice in status["advice"]:
        _line(advice)


# One line per API result (miwv.py), for people; --json prints the result's as_dict() instead.


def _line(text: str) -> None:
    sys.stdout.write(visible(text) + "\n")


def print_ingested(result) -> None:
    _line(
        f"ingest {result.ingest_id}: {result.path} -> dataset {result.dataset!r} ({result.record_shape}): "
        f"{result.rows_read} rows read, {result.rows_new} new, {result.rows_duplicate} duplicates, "
        f"{result.rows_rejected} rejected in {result.seconds:.2f} s"
    )
    if result.replace:
        counts = f"{result.rows_in} rows in, {result.rows_out} out"
        _line(f"dataset {result.dataset!r} v{result.version}: {counts}{_left(result)}")


def _left(result) -> str:
    """What rows leaving did, in brackets: samples retired, links to repair (empty when nothing)."""
    parts = []
    if result.samples_retired:
        parts.append(f"{result.samples_retired} samples retired")
    if result.links_to_repair:
        parts.append(f"{result.links_to_repair} links to repair: run `python cli.py embed`, then `score`")
    return f" ({'; '.join(parts)})" if parts else ""


def print_embedded(result) -> None:
    _line(
        f"embedder {result.embedder} ({result.pooling} pooling, {result.dimension} dims): "
        f"{result.embedded} embedded, {result.total} in all ({result.seconds:.1f} s)"
    )
    print_linked(result.neighbours)


def print_linked(result) -> None:
    scope = "" if result.scope == "catalog" else f", within each of {result.datasets} datasets"
    _line(
        f"neighbours ({result.embedder}, {result.method}, {result.mode}{scope}): {result.samples} samples, "
        f"{result.new_samples} new, {result.changed} links written, {result.without_neighbour} without "
        f"a neighbour ({result.seconds:.1f} s)"
    )


def print_scored(result) -> None:
    _line(
        f"scored {result.model} (scorer {result.scorer_id}, {result.template} template, max length "
        f"{result.max_length}, {result.device}{f' x {result.workers} workers' if result.workers > 1 else ''}): "
        f"{', '.join(result.metrics)} over {_pool_kind(result)}, {result.samples} needed passes, "
        f"{result.passes} passes ({_by_kind(result)}; {result.unscorable} unscorable), {result.tokens_run} tokens "
        f"run in {result.seconds:.1f} s"
    )
    if result.examples > 1:
        _line(f"one-shot passes with each sample's {result.examples} nearest examples (MIWV@1..{result.examples})")
    if result.not_linked:
        command = "embed" if result.scope == "catalog" else "neighbours --scope dataset"
        _line(f"{result.not_linked} pool samples have no neighbour link yet: run `python cli.py {command}` first")


def _pool_kind(result) -> str:
    """The pool as people read it: "pool 40", or "screened pool 30 (selection 3 + a 20-sample calibration)"."""
    if result.pool_kind in ("catalog", "dataset"):
        return f"pool {result.pool}" + (" (examples from within the dataset)" if result.scope == "dataset" else "")
    screens = []
    if result.pool_selection_id is not None:
        screens.append(f"selection {result.pool_selection_id}")
    if result.pool_where is not None:
        screens.append(f"where {result.pool_where}")
    calibration = f" + a {result.calibration}-sample calibration" if result.calibration else ""
    return f"screened pool {result.pool} ({' and '.join(screens)}{calibration})"


def _by_kind(result) -> str:
    kinds = (
        ("zero-shot", result.zero_shot_passes),
        ("one-shot", result.one_shot_passes),
        ("response", result.response_passes),
    )
    return ", ".join(f"{count} {kind}" for kind, count in kinds if count) or "none"


def print_selection(result) -> None:
    excluded = ", ".join(f"{count} {reason}" for reason, count in sorted(result.excluded.items())) or "none"
    _line(
        f"selection {result.selection_id} ({result.strategy}): pool {result.pool_size}, eligible "
        f"{result.eligible} (excluded: {excluded}), selected {result.selected}"
    )
    if result.cascade:
        _line(cascade_line(result.cascade))
    if result.output:
        written = result.output
        _line(f"wrote {written.rows} samples ({written.shape}, {written.file_format}) to {written.path}")
        if written.note:
            _line(f"note: {written.note}")


def cascade_line(cascade: dict[str, Any]) -> str:
    """What a screened selection's calibration says the screen cost (catalog.pools.cascade_estimate)."""
    return (
        f"the screen (selection {cascade['screen_selection_id']}) kept an estimated {cascade['recall']:.0%} "
        f"(95% CI {cascade['ci_low'] * 100:.0f}-{cascade['ci_high'] * 100:.0f}%) of the target's top "
        f"{cascade['top_percent']:g}%, from a {cascade['calibration_samples']}-sample calibration "
        f"({cascade['kept']} of its top {cascade['calibration_top']})"
    )


def print_cascades(rows: list[dict[str, Any]]) -> None:
    """Under the `selections` table: each screened selection's recall estimate."""
    for row in rows:
        if row.get("cascade"):
            _line(f"selection {row['selection_id']}: {cascade_line(row['cascade'])}")


def print_report(result) -> None:
    print_rows(result.summary, title=f"MIWV of {result.model} per dataset ({result.scorer})")
    if result.ifd:
        print_rows(result.ifd["summary"], title="IFD and ifd_ppl per dataset")
        agreement = result.ifd["agreement"]
        if agreement:
            _line(
                f"MIWV against IFD over {agreement['samples']} samples: Spearman {agreement['spearman']}; "
                f"{agreement['top_overlap']} of MIWV's top {agreement['top_k']} are in IFD's top {agreement['top_k']}"
            )
    if result.cascades:
        from catalog.report import screen_line

        for row in result.cascades:
            _line(screen_line(row).removeprefix("- "))
    stability = result.stability
    if stability:
        from catalog.report import STABILITY_COLUMNS

        rows = stability["rows"]
        print_rows(
            rows, title="stability: MIWV with the 2nd nearest example against the 1st", columns=STABILITY_COLUMNS
        )
        for row in rows:
            _line(f"{row['dataset']}: {row['meaning']}")
    if result.sizes:
        from catalog.report import SIZE_COLUMNS

        print_rows(result.sizes, title="the trained selections' reference loss against K", columns=SIZE_COLUMNS)
    _line("wrote " + ", ".join(str(path) for path in result.files))


def print_upgraded(result) -> None:
    _line(f"catalog {result.catalog} is at schema revision {result.revision}")


def print_evaluated(result) -> None:
    _line(
        f"runs {', '.join(map(str, result.runs))}: {result.prompts} prompts ({result.new_prompts} new), "
        f"{result.generated} answers generated ({result.settings}) in {result.seconds:.1f} s"
    )
    for run, loss in result.reference_losses.items():
        _line(f"run {run}: mean reference loss {_plain(loss)} on {result.reference_file}")
    if result.judge:
        unreadable = result.unreadable
        again = f", {unreadable} answers unreadable twice (not stored; a rerun asks again)" if unreadable else ""
        _line(f"judge {result.judge}: {result.asked} questions asked{again}")
        print_rows(result.pairs, title="pairwise winning score of run_a against run_b (both orders)")


def print_experiments(rows: list[dict[str, Any]]) -> None:
    flat = [{**{k: v for k, v in row.items() if k != "winning_score"}, **row["winning_score"]} for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))  # runs differ in test sets and opponents
    print_rows(flat, title="training runs", columns=columns)


def print_trained(result) -> None:
    if result.already_finished:
        done = "already trained: run"
    else:
        done = "resumed and finished run" if result.resumed else "trained run"
    loss = f"final loss {result.final_loss:.4f}" if result.final_loss is not None else "no loss logged"
    left_out = f" ({result.too_long} too long, left out)" if result.too_long else ""
    _line(
        f"{done} {result.run_id}: {result.model} ({result.method}, {result.template} template, {result.device}) on "
        f"selection {result.selection_id}, {result.samples} samples{left_out}, {result.steps} steps, {loss}, "
        f"{result.seconds:.1f} s; {result.output_path}"
    )
