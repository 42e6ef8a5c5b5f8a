"""Input files (.jsonl, .json, .parquet, .csv; .gz for the text formats) as numbered rows.

A row that cannot be read (bad JSON, bad UTF-8) comes back with an error instead of a
record, so ingest can refuse the file or skip the row. A file that cannot be read at all
raises InvalidInput.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.errors import InvalidInput

FORMATS = ("jsonl", "json", "parquet", "csv")
RAW_LIMIT = 20_000  # characters of a rejected row kept for the user to inspect


@dataclass(frozen=True)
class Row:
    """One record of the file, or the reason it could not be read."""

    number: int  # 1-based: the line of a JSONL file, else the record/row index
    record: Any = None
    error: str | None = None
    raw: str | None = None  # the row's original text, kept for rejected rows


@dataclass(frozen=True)
class RowFile:
    """A readable input file: its format, how its rows are counted, and the rows."""

    path: Path
    file_format: str
    unit: str  # "line", "record" or "row": how messages name a row
    rows: list[Row]


def file_format_of(path: Path) -> str:
    """The format a file's name announces (.gz stripped), or InvalidInput."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    names = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if suffix not in names:
        raise InvalidInput(
            f"{path}: unsupported file type {suffix or '(none)'}; "
            "use .jsonl, .json, .parquet or .csv (text formats may be .gz)"
        )
    if names[suffix] == "parquet" and path.suffix.lower() == ".gz":
        raise InvalidInput(f"{path}: parquet is compressed internally; do not gzip it")
    return names[suffix]


def read_file(path: str | Path) -> RowFile:
    """Read every row of `path`."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    file_format = file_format_of(path)
    if file_format == "parquet":
        return RowFile(path, "parquet", "row", _parquet_rows(path))
    data = _read_bytes(path)
    if file_format == "json" and data.lstrip()[:1] == b"{":
        file_format = "jsonl"  # a .json file of one object per line
    if file_format == "jsonl":
        return RowFile(path, "jsonl", "line", list(_jsonl_rows(data)))
    text = _decode_whole(path, data)
    if file_format == "json":
        return RowFile(path, "json", "record", _json_array_rows(path, text))
    return RowFile(path, "csv", "row", list(_csv_rows(text)))


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise InvalidInput(f"{path}: cannot read it ({error})") from None


def _decode_whole(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InvalidInput(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x}); convert the file to UTF-8"
        ) from None


def _jsonl_rows(data: bytes) -> Iterator[Row]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            yield Row(
                number,
                error=f"not valid UTF-8 (byte 0x{line[error.start]:02x} at column {error.start + 1})",
                raw=line.decode("utf-8", "replace")[:RAW_LIMIT],
            )
            continue
        try:
            yield Row(number, record=json.loads(text))
        except json.JSONDecodeError as error:
            yield Row(number, error=f"invalid JSON ({error.msg} at column {error.colno})", raw=text[:RAW_LIMIT])


def _json_array_rows(path: Path, text: str) -> list[Row]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"{path}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(records, list):
        raise InvalidInput(f"{path}: a .json file must hold an array of records (or one JSON object per line)")
    return [Row(number, record=record) for number, record in enumerate(records, start=1)]


def _csv_rows(text: str) -> Iterator[Row]:
    """Rows of a CSV file with a header; an empty cell is an absent value (CSV cannot tell them apart)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for number, record in enumerate(reader, start=1):
        if None in record:  # more cells than header columns
            yield Row(
                number,
                error=f"{len(reader.fieldnames or [])} columns in the header, more in this row",
                raw=json.dumps(record, ensure_ascii=False, default=str)[:RAW_LIMIT],
            )
            continue
        yield Row(number, record={key: value if value != "" else None for key, value in record.items()})


def _parquet_rows(path: Path) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise InvalidInput(f"{path}: not a readable parquet file ({error})") from None
    return [Row(number, record=record) for number, record in enumerate(table.to_pylist(), start=1)]
