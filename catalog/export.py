"""Writing a selection out for trainers: JSONL, Parquet or a Hugging Face `datasets` folder.

Rows come back as the user had them (Alpaca fields or messages, plus every extra field),
optionally with the scores. Writing goes to a staging path beside the target and is renamed
into place, so a crash never leaves a half-written file at --out; an existing folder is
replaced only when this tool wrote it, and never anything inside the catalog.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from catalog import db
from catalog.choices import EXPORT_FORMATS
from catalog.errors import UserError
from catalog.store import Catalog

SCORE_FIELDS = ("miwv", "zero_shot_loss", "one_shot_loss", "neighbour_similarity")
MARKER = ".miwv-export"  # inside every export folder this tool writes: only such a folder may be replaced
STAGING_PREFIX = ".miwv-staging-"
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-[a-z0-9_]{8}-.+")


@dataclass(frozen=True)
class Exported:
    path: Path
    file_format: str
    shape: str
    rows: int


def format_of(out: Path, requested: str | None) -> str:
    """The output format: asked for, or from the name (.jsonl, .parquet; no suffix = HF folder)."""
    if requested is not None:
        return requested
    suffix = out.suffix.lower()
    if suffix in (".jsonl", ".parquet"):
        return suffix[1:]
    if suffix == "":
        return "hf"
    raise UserError(
        f"cannot tell the format of {out} from its name: use .jsonl, .parquet, a folder name "
        "(Hugging Face datasets), or --format"
    )


@dataclass(frozen=True)
class Target:
    """Where an export goes, checked before any work is done."""

    path: Path
    file_format: str


def check_target(catalog: Catalog, out: str | Path, file_format: str | None = None) -> Target:
    """Refuse an `out` this tool may not overwrite: anything inside the catalog, and any existing
    folder but an export folder it wrote itself (it holds MARKER). A file may be replaced."""
    out = Path(out)
    file_format = format_of(out, file_format)
    if file_format not in EXPORT_FORMATS:
        raise UserError(f"unknown format {file_format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    resolved, catalog_dir = out.resolve(), catalog.path.resolve()
    if resolved == catalog_dir or catalog_dir in resolved.parents:
        raise UserError(f"--out {out} is inside the catalog {catalog.path}; write the export somewhere else")
    if out.is_dir() and not (out / MARKER).is_file():
        raise UserError(
            f"--out {out} is an existing folder this tool did not write; it is left untouched: "
            "choose a new name (nothing was selected or recorded)"
        )
    if out.exists() and not out.is_dir() and not out.is_file():
        raise UserError(f"--out {out} is not a regular file; choose another name")
    return Target(out, file_format)


def export_samples(
    catalog: Catalog,
    sample_ids: list[int],
    out: str | Path,
    file_format: str | None = None,
    shape: str | None = None,
    with_scores: bool = False,
    scorer_id: int | None = None,
    embedder_id: int | None = None,
) -> Exported:
    """Write `sample_ids`, in that order, to `out` (see write_samples), through a staging path."""
    target = check_target(catalog, out, file_format)
    with staged(target.path) as stage:
        return write_samples(catalog, sample_ids, target, stage.path, shape, with_scores, scorer_id, embedder_id)


def write_samples(
    catalog: Catalog,
    sample_ids: list[int],
    target: Target,
    path: Path,
    shape: str | None = None,
    with_scores: bool = False,
    scorer_id: int | None = None,
    embedder_id: int | None = None,
) -> Exported:
    """Write `sample_ids`, in that order, to `path` (a staging path for `target`).

    Args:
        shape: "alpaca" (instruction, input, output) or "messages"; default alpaca when every
            sample has Alpaca fields.
        with_scores: add miwv, zero_shot_loss, one_shot_loss and neighbour_similarity (from the
            scores of `scorer_id` with `embedder_id`'s neighbours).
    """
    rows = _rows(catalog, sample_ids, scorer_id, embedder_id)
    alpaca_ready = all(r["instruction"] is not None for r in rows)
    shape = shape or ("alpaca" if alpaca_ready else "messages")
    if shape == "alpaca" and not alpaca_ready:
        raise UserError("some selected samples are conversations without Alpaca fields; use --shape messages")
    records = [_record(r, shape, with_scores) for r in rows]
    if target.file_format == "jsonl":
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        table = _table(records)
        if target.file_format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, path)
        else:
            import datasets
            from datasets.table import InMemoryTable

            datasets.disable_progress_bars()
            datasets.Dataset(InMemoryTable(table)).save_to_disk(str(path))
            (path / MARKER).write_text("written by miwv-catalog `select --out`; it may replace this folder\n")
    return Exported(target.path, target.file_format, shape, len(records))


def _rows(catalog: Catalog, sample_ids: list[int], scorer_id: int | None, embedder_id: int | None) -> list[dict]:
    order = pa.table({"sample_id": pa.array(sample_ids, pa.int64()), "rank": pa.array(range(len(sample_ids)))})
    with catalog.read() as conn, db.registered(conn, "wanted", order):
        return db.records(
            conn,
            """
            SELECT s.instruction, s.input, s.output, s.messages, s.extra,
                   m.miwv, m.zero_shot_loss, m.one_shot_loss, m.similarity AS neighbour_similarity
            FROM wanted w
            JOIN samples s USING (sample_id)
            LEFT JOIN miwv_scores m
                   ON m.sample_id = w.sample_id AND m.scorer_id = $scorer AND m.embedder_id = $embedder
            ORDER BY w.rank""",
            {"scorer": scorer_id, "embedder": embedder_id},
        )


def _record(row: dict, shape: str, with_scores: bool) -> dict:
    if shape == "alpaca":
        record = {"instruction": row["instruction"], "input": row["input"], "output": row["output"]}
    else:
        record = {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}
    record.update(json.loads(row["extra"]) if row["extra"] else {})
    if with_scores:
        record.update({field: row[field] for field in SCORE_FIELDS})
    return record


def _table(records: list[dict]) -> pa.Table:
    """Columns are the union of the records' fields (absent = null), in first-seen order.

    A field Arrow cannot type (an integer beyond int64, values of mixed types) is written as
    JSON text, so no extra field can make an export fail.
    """
    names = list(dict.fromkeys(key for record in records for key in record))
    return pa.table({name: _column([record.get(name) for record in records]) for name in names})


def _column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


class Stage:
    """A staging path beside `out`; publish() moves it into place and keeps the old one aside
    until the stage ends, so a later failure can put everything back (unpublish)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = Path(
            tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=f"-{out.name}", dir=out.parent)
        )
        self.path = self.dir / "staging"
        self._retired = self.dir / "retired"
        self.published = False

    def publish(self) -> None:
        if self.out.is_dir() or (self.out.exists() and self.path.is_dir()):
            self.out.rename(self._retired)  # a folder cannot be replaced in one rename: swap
        elif self.out.exists():
            os.link(self.out, self._retired)  # keep the old file; the replace below is atomic
        os.replace(self.path, self.out)
        self.published = True

    def unpublish(self) -> None:
        self.out.rename(self.path)
        if self._retired.exists():
            os.replace(self._retired, self.out)
        self.published = False


@contextmanager
def staged(out: Path) -> Iterator[Stage]:
    """A Stage for `out`, published when the block succeeds (unless it published itself), put back
    if the block fails after publishing; its staging folder is removed either way."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(out.parent)
    stage = Stage(out)
    try:
        yield stage
        if not stage.published:
            stage.publish()
    except BaseException:
        if stage.published:
            stage.unpublish()
        raise
    finally:
        shutil.rmtree(stage.dir, ignore_errors=True)


def _remove_stale_stages(folder: Path) -> None:
    """Remove staging folders this tool left in `folder` when its process was killed (only its own
    names, and only those whose process is gone)."""
    for entry in folder.glob(f"{STAGING_PREFIX}*"):
        owner = _STAGING_NAME.fullmatch(entry.name)
        if owner is not None and entry.is_dir() and not _alive(int(owner.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
