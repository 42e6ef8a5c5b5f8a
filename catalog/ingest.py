"""Ingest one file into the catalog, all or nothing.

Rows are parsed and validated before the catalog is touched; then one transaction records
the batch, adds the samples not yet known, the file's dataset memberships and any rejected
rows. A crash or Ctrl-C before the commit leaves the catalog as it was.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from catalog import db
from catalog.errors import InvalidInput
from catalog.readers import RAW_LIMIT, Row, read_file
from catalog.records import SHAPES, RecordError, Sample, detect_shape, to_sample
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

    def as_dict(self) -> dict:
        return asdict(self)


def ingest_file(
    catalog: Catalog, path: str | Path, dataset: str | None = None, shape: str | None = None, skip_invalid: bool = False
) -> IngestResult:
    """Add the samples of `path` to `catalog` as members of `dataset`.

    Args:
        catalog: the catalog to write to (created if absent).
        path: a .jsonl, .json, .parquet or .csv file (text formats may be gzipped).
        dataset: the dataset the file's rows belong to (default: the file name up to its first dot).
        shape: "alpaca", "sharegpt" or "openai"; detected from the first record when None.
        skip_invalid: ingest the valid rows and record the invalid ones, instead of refusing the file.
    """
    started = time.monotonic()
    started_at = db.utcnow()
    dataset = Path(path).name.split(".")[0] if dataset is None else dataset
    if not dataset.strip():
        raise InvalidInput("--dataset must not be empty")
    rows = read_file(path)
    if not rows.rows:
        raise InvalidInput(f"{rows.path}: the file holds no records")
    shape = shape or _detect_shape(rows.path, rows.rows)
    if shape not in SHAPES:
        raise InvalidInput(f"unknown record format {shape!r}; use one of {', '.join(SHAPES)}")

    samples: dict[int, tuple[int, Sample]] = {}  # first occurrence of each sample in the file
    rejects: list[tuple[int, str, str | None]] = []
    for row in track(rows.rows, len(rows.rows), f"reading {rows.path.name}"):
        if row.error is not None:
            rejects.append((row.number, row.error, row.raw))
            continue
        try:
            sample = to_sample(row.record, shape)
        except RecordError as error:
            rejects.append((row.number, str(error), _raw(row)))
            continue
        samples.setdefault(sample.sample_id, (row.number, sample))
    if rejects and not skip_invalid:
        number, reason, _ = rejects[0]
        more = f"; {len(rejects) - 1} more invalid {rows.unit}s" if len(rejects) > 1 else ""
        raise InvalidInput(
            f"{rows.path}: {rows.unit} {number}: {reason}{more}. Nothing was ingested; fix the file "
            "or pass --skip-invalid to ingest the valid rows and record the rest in the `rejects` view"
        )

    valid = len(rows.rows) - len(rejects)
    file_sha256 = hashlib.sha256(rows.path.read_bytes()).hexdigest()
    with catalog.write() as conn:
        ingest_id = db.next_id(conn, "ingest_batch", "ingest_id")
        table = _sample_table(list(samples.values()), ingest_id, started_at)
        with db.registered(conn, "incoming", table):
            rows_new = db.execute(conn, _INSERT_NEW_SAMPLES)[0][0]
            db.execute(conn, _INSERT_MEMBERSHIPS, {"dataset": dataset, "ingest_id": ingest_id})
        if rejects:
            db.insert_arrow(conn, "ingest_reject", _reject_table(rejects, ingest_id))
        result = IngestResult(
            ingest_id=ingest_id,
            path=str(rows.path.resolve()),
            dataset=dataset,
            file_format=rows.file_format,
            record_shape=shape,
            rows_read=len(rows.rows),
            rows_new=rows_new,
            rows_duplicate=valid - rows_new,
            rows_rejected=len(rejects),
            seconds=round(time.monotonic() - started, 3),
        )
        batch = {k: v for k, v in result.as_dict().items() if k != "seconds"}
        db.execute(
            conn, _INSERT_BATCH, {**batch, "sha": file_sha256, "started_at": started_at, "finished_at": db.utcnow()}
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

_INSERT_BATCH = """
    INSERT INTO ingest_batch (ingest_id, path, dataset, file_format, record_shape, file_sha256, started_at,
                              finished_at, rows_read, rows_new, rows_duplicate, rows_rejected)
    VALUES ($ingest_id, $path, $dataset, $file_format, $record_shape, $sha, $started_at,
            $finished_at, $rows_read, $rows_new, $rows_duplicate, $rows_rejected)
"""


def _detect_shape(path: Path, rows: list[Row]) -> str:
    first = next((row for row in rows if row.error is None), None)
    shape = detect_shape(first.record) if first else None
    if shape is None:
        keys = sorted(first.record) if first and isinstance(first.record, dict) else []
        raise InvalidInput(
            f"{path}: cannot tell the record format from the first record (keys: {keys}); expected Alpaca "
            "(instruction, input, output), ShareGPT (conversations) or OpenAI (messages), or pass --format"
        )
    return shape


def _raw(row: Row) -> str:
    return json.dumps(row.record, ensure_ascii=False, default=str)[:RAW_LIMIT]


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
                [json.dumps(s.extra, ensure_ascii=False, default=str) if s.extra else None for _, s in samples],
                pa.string(),
            ),
            "created_at": pa.array([created_at] * len(samples), pa.timestamp("us")),
            "ingest_id": pa.array([ingest_id] * len(samples), pa.int32()),
            "source_row": pa.array([number for number, _ in samples], pa.int32()),
        }
    )


def _reject_table(rejects: list[tuple[int, str, str | None]], ingest_id: int) -> pa.Table:
    return pa.table(
        {
            "ingest_id": pa.array([ingest_id] * len(rejects), pa.int32()),
            "source_row": pa.array([number for number, _, _ in rejects], pa.int32()),
            "reason": pa.array([reason for _, reason, _ in rejects], pa.string()),
            "raw": pa.array([raw for _, _, raw in rejects], pa.string()),
        }
    )
