"""Rows held in memory (dicts, a pandas DataFrame, a pyarrow Table, a `datasets.Dataset`) as a RowSource,
so the Python API ingests them through the same validation and transaction as files."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from catalog.errors import InvalidInput
from catalog.readers import Row, RowSource, arrow_rows, record_json


def memory_rows(rows: Any, source: str) -> RowSource:
    """Number `rows` from 1; `source` names them in messages and in ingest_batch.path."""
    file_format, rows = _unwrapped(rows)
    if isinstance(rows, pa.Table):
        listed, columns = arrow_rows(rows, start=1), rows.column_names
    elif isinstance(rows, Iterable) and not isinstance(rows, str | bytes | dict):
        listed, columns = [Row(number, record=record) for number, record in enumerate(rows, start=1)], None
    else:
        raise InvalidInput(
            f"{source}: rows must be a list of dicts, a pandas DataFrame, a pyarrow Table or a datasets.Dataset, "
            f"not {type(rows).__name__}"
        )
    digest = hashlib.sha256()
    for row in listed:
        digest.update(
            (record_json(row.record, limit=None) or f"<row {row.number} nested too deeply>").encode("utf-8") + b"\n"
        )
    return RowSource(source, source, file_format, "row", listed, digest.hexdigest(), columns)


def _unwrapped(rows: Any) -> tuple[str, Any]:
    """The file_format recorded for `rows`, and `rows` as an Arrow table or an iterable of records."""
    if isinstance(rows, pa.Table):
        return "arrow", rows
    pandas, datasets = sys.modules.get("pandas"), sys.modules.get("datasets")
    if pandas is not None and isinstance(rows, pandas.DataFrame):
        try:
            return "pandas", pa.Table.from_pandas(rows, preserve_index=False)
        except (pa.ArrowException, UnicodeEncodeError):  # mixed types, a lone surrogate: validate row by row
            return "pandas", rows.astype(object).where(rows.notna(), None).to_dict("records")
    if datasets is not None and isinstance(rows, datasets.Dataset):
        return "hf-dataset", rows.with_format("arrow")[:]  # honours a selection or shuffle (the indices mapping)
    return "python", rows
