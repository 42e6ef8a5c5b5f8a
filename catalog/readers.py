"""Input files (.jsonl, .json, .parquet, .csv; .gz for the text formats) as numbered rows.

A row that cannot be read (bad JSON, bad UTF-8, nesting too deep to parse) comes back with
an error instead of a record, so ingest can refuse the file or skip the row. A file that
cannot be read at all raises InvalidInput. Other sources (folders, hf:, rows in memory)
produce the same RowSource through `arrow_rows` and `record_json`.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog.errors import InvalidInput
from catalog.records import storable_text

FORMATS = ("jsonl", "json", "parquet", "csv")
RAW_LIMIT = 20_000  # characters of a rejected row kept for the user to inspect
TOO_DEEP = "JSON nested too deeply to read"
CSV_CELL_LIMIT = 2**31 - 1  # csv's default of 131,072 characters refuses real long-context cells


@dataclass(frozen=True)
class Row:
    """One record of the source, or the reason it could not be read."""

    number: int  # 1-based and unique within a source: the file line for JSONL/CSV, else the record/row index
    record: Any = None
    error: str | None = None
    raw: str | None = None  # the row's original text, kept for rejected rows
    place: str | None = None  # how messages name the row when "<unit> <number>" does not say it all


@dataclass(frozen=True)
class RowSource:
    """A readable input: how messages name it, what ingest_batch records, and its rows."""

    label: str  # the path or name as the user gave it, for messages
    location: str  # recorded as ingest_batch.path: a resolved path, hf:NAME or the caller's name for in-memory rows
    file_format: str
    unit: str  # "line", "record" or "row": how messages name a row
    rows: list[Row]
    fingerprint: str  # SHA-256 of the content (of the file, or over the shards' hashes)
    columns: list[str] | None = None  # the column names of a tabular source; None when each record has its own

    def where(self, row: Row) -> str:
        """How a message names `row`: "line 7", "record 3 (line 12)", "row 5 of shard data/x.parquet"."""
        return row.place or f"{self.unit} {row.number}"


def name_text(name: str | os.PathLike) -> str:
    """A file name or an argument as text the catalog and a terminal can hold: each byte not UTF-8 as \\xNN."""
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to (given from Python)
        return storable_text(os.fspath(name))


def file_format_of(path: Path) -> str:
    """The format a file's name announces (.gz stripped), or InvalidInput."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    names = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if suffix not in names:
        raise InvalidInput(
            f"{name_text(path)}: unsupported file type {name_text(suffix) or '(none)'}; "
            "use .jsonl, .json, .parquet or .csv (text formats may be .gz), a folder or hf:NAME"
        )
    if names[suffix] == "parquet" and path.suffix.lower() == ".gz":
        raise InvalidInput(f"{name_text(path)}: parquet is compressed internally; do not gzip it")
    return names[suffix]


def read_file(path: str | Path) -> RowSource:
    """Read every row of `path`."""
    path, label = Path(path), name_text(path)
    if not path.is_file():
        raise InvalidInput(f"{label}: no such file")
    file_format = file_format_of(path)
    fingerprint = file_sha256(path)
    location = name_text(path.resolve())
    if file_format == "parquet":
        rows, columns = parquet_rows(path, start=1)
        return RowSource(label, location, "parquet", "row", rows, fingerprint, columns)
    data = _read_bytes(path).removeprefix(codecs.BOM_UTF8)
    if file_format == "json" and data.lstrip()[:1] == b"{":
        file_format = "jsonl"  # a .json file of one object per line
    if file_format == "jsonl":
        rows = list(_jsonl_rows(data))
        return RowSource(label, location, "jsonl", "line", rows, fingerprint)
    text = _decode_whole(label, data)
    if file_format == "json":
        rows = _json_array_rows(label, text)
        return RowSource(label, location, "json", "record", rows, fingerprint)
    header, rows = _csv_rows(label, text)
    return RowSource(label, location, "csv", "line", rows, fingerprint, header)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def record_json(record: Any, limit: int | None = RAW_LIMIT) -> str | None:
    """A record as storable JSON text (lone surrogates escaped, cut at `limit`); None if nested too deeply."""
    try:
        return storable_text(json.dumps(record, ensure_ascii=False, default=str))[:limit]
    except RecursionError:
        return None


def arrow_rows(table: pa.Table, start: int, part: str | None = None) -> list[Row]:
    """The rows of an Arrow table numbered from `start`; with `part` ("shard X"), messages say "row i of shard X"."""
    return [
        Row(start + i, record=record, place=f"row {i + 1} of {part}" if part else None)
        for i, record in enumerate(table.to_pylist())
    ]


def parquet_rows(path: Path, start: int, part: str | None = None) -> tuple[list[Row], list[str]]:
    """The rows of one Parquet file (see `arrow_rows`) and its column names."""
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as handle:  # Arrow cannot open a name that is not UTF-8
            table = pq.read_table(handle)
    except (pa.ArrowException, OSError) as error:
        raise InvalidInput(f"{name_text(path)}: not a readable parquet file ({error})") from None
    return arrow_rows(table, start, part), table.column_names


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise InvalidInput(f"{name_text(path)}: cannot read it ({error})") from None


def _decode_whole(label: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InvalidInput(
            f"{label}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x}); convert the file to UTF-8"
        ) from None


def _json_problem(error: json.JSONDecodeError) -> str:
    """'invalid JSON (<what> at column N)'; some of json's messages already end in ' at'."""
    return f"invalid JSON ({error.msg.removesuffix(' at')} at column {error.colno})"


def _jsonl_rows(data: bytes) -> Iterator[Row]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
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
            yield Row(number, error=_json_problem(error), raw=text[:RAW_LIMIT])
        except RecursionError:
            yield Row(number, error=TOO_DEEP, raw=text[:RAW_LIMIT])


def _json_array_rows(label: str, text: str) -> list[Row]:
    """The elements of a JSON array, one at a time, so one element nested too deeply is a row error."""
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != "[":
        raise InvalidInput(f"{label}: a .json file must hold an array of records (or one JSON object per line)")
    rows: list[Row] = []
    pos, line, counted = _skip_space(text, pos + 1), 1, 0
    while text[pos : pos + 1] != "]":
        line, counted = line + text.count("\n", counted, pos), pos
        number = len(rows) + 1
        try:
            record, end = decoder.raw_decode(text, pos)
            rows.append(Row(number, record=record, place=f"record {number} (line {line})"))
        except json.JSONDecodeError as error:
            raise InvalidInput(f"{label}:{error.lineno}: {_json_problem(error)}") from None
        except RecursionError:
            end = _end_of_value(text, pos)
            raw = text[pos : min(end, pos + RAW_LIMIT)]
            rows.append(Row(number, error=TOO_DEEP, raw=raw, place=f"record {number} (line {line})"))
        pos = _skip_space(text, end)
        if text[pos : pos + 1] == ",":
            pos = _skip_space(text, pos + 1)
        elif text[pos : pos + 1] != "]":
            line += text.count("\n", counted, pos)
            raise InvalidInput(f"{label}:{line}: invalid JSON (expecting ',' or ']' after record {number})")
    if _skip_space(text, pos + 1) != len(text):
        raise InvalidInput(f"{label}: invalid JSON (extra data after the array)")
    return rows


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _end_of_value(text: str, pos: int) -> int:
    """The end of the array or object starting at `pos`, found by counting brackets outside strings."""
    depth, in_string, escaped = 0, False, False
    for end in range(pos, len(text)):
        char = text[end]
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return end + 1
    return len(text)


def _csv_rows(label: str, text: str) -> tuple[list[str], list[Row]]:
    """The header and rows of a CSV file, each row numbered by the file line it starts on.

    A quoted cell may span lines, so a record's line is where the previous one ended, plus one.
    An empty cell is an absent value (CSV cannot tell them apart).
    """
    csv.field_size_limit(CSV_CELL_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
        rows: list[Row] = []
        start = reader.line_num + 1
        for cells in reader:
            number, start = start, reader.line_num + 1
            if not cells:
                continue
            if len(cells) > len(header):
                raw = json.dumps(cells, ensure_ascii=False)[:RAW_LIMIT]
                rows.append(
                    Row(number, error=f"{len(header)} columns in the header, {len(cells)} in this row", raw=raw)
                )
                continue
            rows.append(Row(number, record={key: value or None for key, value in zip(header, cells, strict=False)}))
    except csv.Error as error:
        raise InvalidInput(f"{label}:{reader.line_num}: not readable as CSV ({error})") from None
    return header, rows
