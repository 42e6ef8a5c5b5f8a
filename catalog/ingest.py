"""Ingest one source (a file, a folder, hf:NAME, or rows in memory) into the catalog, all or nothing.

Rows are parsed and validated before the catalog is touched; then one transaction records
the batch, adds the samples not yet known, the source's dataset memberships and any rejected
rows. A crash, Ctrl-C or a failed write (disk full) leaves the catalog as it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog import db, lifecycle
from catalog.choices import COLUMN_TARGETS
from catalog.datasets import dataset_name
from catalog.errors import ArgumentError, InvalidInput
from catalog.readers import Row, RowSource, name_text, read_file, record_json
from catalog.records import (
    SHAPES,
    RecordError,
    Sample,
    detect_shape,
    rename_columns,
    storable_text,
    to_sample,
)
from catalog.store import Catalog
from terminal.progress import track

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


@dataclass(frozen=True)
class IngestResult:
    """What one ingest did."""

    ingest_id: int
    path: str
    dataset: str
    file_format: str
    record_shape: str
    rows_read: int
    rows_new: int
    rows_duplicate: int
    rows_rejected: int
    seconds: float
    replace: bool = False
    rows_in: int = 0  # rows that joined the dataset
    rows_out: int = 0  # with replace: members the file no longer holds, which left the dataset
    samples_retired: int = 0  # of those, samples now in no dataset
    links_to_repair: int = 0  # samples whose example was retired: `embed` links them anew
    version: int = 0  # the dataset's version this ingest made

    def as_dict(self) -> dict:
        return asdict(self)


def ingest_file(
    catalog: Catalog,
    path: str | Path,
    dataset: str | None = None,
    shape: str | None = None,
    skip_invalid: bool = False,
    columns: dict[str, str] | None = None,
    split: str | None = None,
    replace: bool = False,
) -> IngestResult:
    """Add the samples of `path` to `catalog` as members of `dataset`.

    Args:
        catalog: the catalog to write to (created if absent).
        path: a .jsonl, .json, .parquet or .csv file (text formats may be gzipped); a folder (a
            `datasets` save_to_disk folder, or Parquet shards at any depth); or hf:NAME (`datasets.load_dataset`).
        dataset: the dataset the rows belong to (default: the file name up to its first dot, the
            folder's name, or NAME's last part; bytes of it that are not UTF-8 written as \\xNN).
        shape: "alpaca", "sharegpt" or "openai"; detected from the first record that shows one when None.
        skip_invalid: ingest the valid rows and record the invalid ones, instead of refusing the source.
        columns: {target: source field} renames applied before anything else (see COLUMN_TARGETS).
        split: the split of a DatasetDict, an hf: dataset or a folder of shards.
        replace: make the dataset's members exactly the source's valid rows: the others leave it
            (catalog.lifecycle); rows that stay keep their ids, vectors and scores.
    """
    path = os.fspath(path)
    if dataset is not None:
        dataset_name(dataset)  # before reading what may be a large source
    source = _open(path, split)
    return _ingest(catalog, source, dataset or _default_dataset(path), shape, skip_invalid, columns, replace)


def ingest_rows(
    catalog: Catalog,
    rows: Any,
    dataset: str,
    shape: str | None = None,
    skip_invalid: bool = False,
    columns: dict[str, str] | None = None,
    source: str = "<rows>",
    replace: bool = False,
) -> IngestResult:
    """Add in-memory `rows` (a list or iterable of dicts, a pandas DataFrame, a pyarrow Table or a
    datasets.Dataset) to `catalog`, validated and written exactly as `ingest_file` does; `source`
    names them in messages and in ingest_batch.path."""
    from catalog.memory_rows import memory_rows

    return _ingest(catalog, memory_rows(rows, source), dataset_name(dataset), shape, skip_invalid, columns, replace)


def _default_dataset(path: str) -> str:
    """The file name up to its first dot, the folder's name or NAME's last part, as `name_text` writes it."""
    name = name_text(Path(path.removeprefix("hf:").rstrip("/")).name.split(".")[0])
    if not name.strip():
        raise ArgumentError("pass {0}: the source's name gives none to default to", "dataset", detail=name_text(path))
    return name


def _open(path: str, split: str | None) -> RowSource:
    if path.startswith("hf:"):
        from catalog.hf_sources import read_hub

        return read_hub(path.removeprefix("hf:"), split)
    if Path(path).is_dir():
        from catalog.hf_sources import read_folder

        return read_folder(Path(path), split)
    if split is not None:
        raise InvalidInput(f"{name_text(path)}: --split applies to folders and hf: datasets, not to a file")
    return read_file(path)


def _ingest(
    catalog: Catalog,
    source: RowSource,
    dataset: str,
    shape: str | None,
    skip_invalid: bool,
    columns: dict | None,
    replace: bool,
) -> IngestResult:
    started = time.monotonic()
    started_at = db.utcnow()
    if not source.rows:
        raise InvalidInput(f"{source.label}: the source holds no records")
    rows = _renamed(source, columns or {})
    shape = shape or _detect_shape(source, rows)
    if shape not in SHAPES:
        raise InvalidInput(f"unknown record format {shape!r}; use one of {', '.join(SHAPES)}")

    samples: dict[int, tuple[int, Sample]] = {}  # first occurrence of each sample in the source
    rejects: list[tuple[Row, str]] = []  # (row, problem)
    for row in track(rows, len(rows), f"reading {Path(source.label).name}"):
        if row.error is not None:
            rejects.append((row, row.error))
            continue
        try:
            sample = to_sample(row.record, shape)
        except RecordError as error:
            rejects.append((row, str(error)))
            continue
        samples.setdefault(sample.sample_id, (row.number, sample))
    if rejects and not skip_invalid:
        row, problem = rejects[0]
        more = f"; {len(rejects) - 1} more invalid {source.unit}s" if len(rejects) > 1 else ""
        raise InvalidInput(
            f"{source.label}: {source.where(row)}: {problem}{more}. Nothing was "
            "ingested; fix the input or pass --skip-invalid to ingest the valid rows and record the rest in the "
            "`rejects` view"
        )

    valid = len(rows) - len(rejects)
    with catalog.write() as conn:
        ingest_id = db.next_id(conn, "ingest_batch", "ingest_id")
        table = _sample_table(list(samples.values()), ingest_id, started_at)
        with db.registered(conn, "incoming", table):
            rows_new = db.execute(conn, _INSERT_NEW_SAMPLES)[0][0]
            rows_in = db.execute(conn, _INSERT_MEMBERSHIPS, {"dataset": dataset, "ingest_id": ingest_id})[0][0]
            change_id = lifecycle.record_change(conn, "replace" if replace else "ingest", source.location, ingest_id)
            left = None
            if replace:
                not_in_source = db.query_arrow(conn, _NOT_IN_SOURCE, {"dataset": dataset})
                left = lifecycle.leave(conn, lifecycle.plan_leaving(conn, not_in_source), change_id)
        rows_out = left.rows_out if left else {}
        versions = lifecycle.record_versions(conn, change_id, {dataset: rows_in}, rows_out)
        if rejects:
            db.insert_arrow(conn, "ingest_reject", _reject_table(rejects, ingest_id))
        result = IngestResult(
            ingest_id=ingest_id,
            path=source.location,
            dataset=dataset,
            file_format=source.file_format,
            record_shape=shape,
            rows_read=len(rows),
            rows_new=rows_new,
            rows_duplicate=valid - rows_new,
            rows_rejected=len(rejects),
            seconds=round(time.monotonic() - started, 3),
            replace=replace,
            rows_in=rows_in,
            rows_out=rows_out.get(dataset, 0),
            samples_retired=len(left.retired) if left else 0,
            links_to_repair=left.orphans.num_rows if left else 0,
            version=versions[dataset],
        )
        batch = {k: v for k, v in result.as_dict().items() if k in _BATCH_FIELDS}
        db.execute(
            conn,
            _INSERT_BATCH,
            {**batch, "sha": source.fingerprint, "started_at": started_at, "finished_at": db.utcnow()},
        )
    return result


_INSERT_NEW_SAMPLES = """
    INSERT INTO sample (sample_id, messages, instruction, input, output, user_text, n_turns, extra, created_at,
                        ingest_id)
    SELECT sample_id, messages, instruction, input, output, user_text, n_turns, extra, created_at, ingest_id
    FROM incoming
    WHERE sample_id NOT IN (SELECT sample_id FROM sample)
"""

_INSERT_MEMBERSHIPS = """
    INSERT INTO membership (sample_id, dataset, ingest_id, source_row)
    SELECT sample_id, $dataset, $ingest_id, source_row
    FROM incoming
    WHERE sample_id NOT IN (SELECT sample_id FROM membership WHERE dataset = $dataset)
"""

# With replace: the dataset's members that the source does not hold.
_NOT_IN_SOURCE = """
    SELECT sample_id, dataset FROM membership
    WHERE dataset = $dataset AND sample_id NOT IN (SELECT sample_id FROM incoming)
"""

_BATCH_FIELDS = ("ingest_id", "path", "dataset", "file_format", "record_shape") + (
    "rows_read",
    "rows_new",
    "rows_duplicate",
    "rows_rejected",
)

_INSERT_BATCH = """
    INSERT INTO ingest_batch (ingest_id, path, dataset, file_format, record_shape, file_sha256, started_at,
                              finished_at, rows_read, rows_new, rows_duplicate, rows_rejected)
    VALUES ($ingest_id, $path, $dataset, $file_format, $record_shape, $sha, $started_at,
            $finished_at, $rows_read, $rows_new, $rows_duplicate, $rows_rejected)
"""


def _renamed(source: RowSource, columns: dict[str, str]) -> list[Row]:
    """The source's rows with `columns` ({target: source field}) renamed; a bad mapping is refused up front."""
    if not columns:
        return source.rows
    unknown = sorted(set(columns) - set(COLUMN_TARGETS))
    if unknown:
        raise InvalidInput(f"--columns: unknown target {', '.join(unknown)}; targets are {', '.join(COLUMN_TARGETS)}")
    doubled = sorted({field for field in columns.values() if list(columns.values()).count(field) > 1})
    if doubled:
        raise InvalidInput(f"--columns: {', '.join(doubled)} is mapped to more than one target; map each field once")
    present = source.columns
    if present is None:
        present = list(dict.fromkeys(key for row in source.rows if isinstance(row.record, dict) for key in row.record))
    missing = [field for field in columns.values() if field not in present]
    if missing:
        raise InvalidInput(
            f"--columns: {source.label} has no field {', '.join(missing)}; its fields: {', '.join(present)}"
        )
    clashing = [target for target in columns if target in present and target not in columns.values()]
    if clashing:
        raise InvalidInput(
            f"--columns: {source.label} already has a field {', '.join(clashing)}; map it away too or drop it"
        )
    return [
        row if row.error else Row(row.number, rename_columns(row.record, columns), place=row.place)
        for row in source.rows
    ]


def _detect_shape(source: RowSource, rows: list[Row]) -> str:
    """The shape of the first row that shows one; else the first row's own problem."""
    for row in rows:
        shape = detect_shape(row.record) if row.error is None else None
        if shape is not None:
            return shape
    first = next((row for row in rows if row.error is None), None)
    if first is None:
        row = rows[0]
        more = f" (and every other {source.unit})" if len(rows) > 1 else ""
        raise InvalidInput(f"{source.label}: {source.where(row)}: {row.error}{more}; nothing was ingested")
    found = f"keys: {sorted(first.record)}" if isinstance(first.record, dict) else type(first.record).__name__
    raise InvalidInput(
        f"{source.label}: {source.where(first)}: cannot tell the record format ({found}); expected Alpaca "
        "(instruction, input, output), ShareGPT (conversations) or OpenAI (messages), or pass --format"
    )


def _sample_table(samples: list[tuple[int, Sample]], ingest_id: int, created_at) -> pa.Table:
    return pa.table(
        {
            "sample_id": pa.array([s.sample_id for _, s in samples], pa.int64()),
            "messages": pa.array(
                [[{"role": r, "content": c} for r, c in s.messages] for _, s in samples], MESSAGES_TYPE
            ),
            "instruction": pa.array([s.instruction for _, s in samples], pa.string()),
            "input": pa.array([s.input for _, s in samples], pa.string()),
            "output": pa.array([s.output for _, s in samples], pa.string()),
            "user_text": pa.array([s.user_text for _, s in samples], pa.string()),
            "n_turns": pa.array([s.n_turns for _, s in samples], pa.int32()),
            "extra": pa.array(
                [s.extra_json for _, s in samples],
                pa.string(),
            ),
            "created_at": pa.array([created_at] * len(samples), pa.timestamp("us")),
            "ingest_id": pa.array([ingest_id] * len(samples), pa.int32()),
            "source_row": pa.array([number for number, _ in samples], pa.int32()),
        }
    )


def _reject_table(rejects: list[tuple[Row, str]], ingest_id: int) -> pa.Table:
    """Rejected rows; a row named by more than its number (a shard's row, a record's line) says so in its reason."""
    return pa.table(
        {
            "ingest_id": pa.array([ingest_id] * len(rejects), pa.int32()),
            "source_row": pa.array([row.number for row, _ in rejects], pa.int32()),
            "reason": pa.array(
                [storable_text(f"{row.place}: {problem}" if row.place else problem) for row, problem in rejects],
                pa.string(),
            ),
            "raw": pa.array([row.raw or record_json(row.record) for row, _ in rejects], pa.string()),
        }
    )
