"""Writing a selection out for trainers: JSONL, Parquet or a Hugging Face `datasets` folder.

Rows come back as the user had them (Alpaca fields or messages, plus every extra field),
optionally with the scores. Writing goes to a temporary path beside the target and is
renamed into place, so a crash never leaves a half-written file at --out.
"""

from __future__ import annotations

import json
import os
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
    """Write `sample_ids`, in that order, to `out`.

    Args:
        shape: "alpaca" (instruction, input, output) or "messages"; default alpaca when every
            sample has Alpaca fields.
        with_scores: add miwv, zero_shot_loss, one_shot_loss and neighbour_similarity (from the
            scores of `scorer_id` with `embedder_id`'s neighbours).
    """
    out = Path(out)
    file_format = format_of(out, file_format)
    if file_format not in EXPORT_FORMATS:
        raise UserError(f"unknown format {file_format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    rows = _rows(catalog, sample_ids, scorer_id, embedder_id)
    alpaca_ready = all(r["instruction"] is not None for r in rows)
    shape = shape or ("alpaca" if alpaca_ready else "messages")
    if shape == "alpaca" and not alpaca_ready:
        raise UserError("some selected samples are conversations without Alpaca fields; use --shape messages")
    records = [_record(r, shape, with_scores) for r in rows]
    with _atomic(out) as staging:
        if file_format == "jsonl":
            with open(staging, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            table = _table(records)
            if file_format == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(table, staging)
            else:
                import datasets
                from datasets.table import InMemoryTable

                datasets.disable_progress_bars()
                datasets.Dataset(InMemoryTable(table)).save_to_disk(str(staging))
    return Exported(out, file_format, shape, len(records))


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
    """Columns are the union of the records' fields (absent = null), in first-seen order."""
    names = list(dict.fromkeys(key for record in records for key in record))
    return pa.table({name: [record.get(name) for record in records] for name in names})


@contextmanager
def _atomic(out: Path) -> Iterator[Path]:
    """A staging path beside `out`, renamed over it when the block succeeds, removed if it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)) / "staging"
    try:
        yield staging
        if out.exists() and (out.is_dir() or staging.is_dir()):
            out.rename(staging.parent / "retired")  # a folder cannot be replaced in one rename: swap, drop the old
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
