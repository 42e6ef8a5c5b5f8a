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
from catalog.choices import EXPORT_FORMATS, EXPORT_TARGETS
from catalog.errors import ArgumentError, UserError
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


def export_table(
    catalog: Catalog,
    sample_ids: list[int],
    shape: str | None = None,
    with_scores: bool = False,
    scorer_id: int | None = None,
    embedder_id: int | None = None,
) -> pa.Table:
    """The records `export_samples` writes, in memory, as one Arrow table (same arguments)."""
    return _table(_shaped_records(_rows(catalog, sample_ids, scorer_id, embedder_id), shape, with_scores)[1])


def _shaped_records(rows: list[dict], shape: str | None, with_scores: bool) -> tuple[str, list[dict]]:
    """(shape, records): alpaca by default when every row has Alpaca fields, else messages."""
    alpaca_ready = all(r["instruction"] is not None for r in rows)
    shape = shape or ("alpaca" if alpaca_ready else "messages")
    if shape == "alpaca" and not alpaca_ready:
        raise ArgumentError(
            "some selected samples are conversations without Alpaca fields; use {0} 'messages'", "shape"
        )
    return shape, [_record(r, shape, with_scores) for r in rows]


# LLaMA-Factory's dataset description (its data/README.md) for each shape we write:
# alpaca = instruction/input/output plus system and earlier turns as [user, assistant] pairs;
# messages = its "sharegpt" formatting with OpenAI-style role/content tags.
LLAMAFACTORY_COLUMNS = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    },
    "messages": {"messages": "messages"},
}
LLAMAFACTORY_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def export_llamafactory(
    catalog: Catalog,
    sample_ids: list[int],
    out_dir: str | Path,
    shape: str | None = None,
    with_scores: bool = False,
    scorer_id: int | None = None,
    embedder_id: int | None = None,
) -> Exported:
    """Write `sample_ids` as a LLaMA-Factory dataset: `<name>.jsonl` in `out_dir` and its entry,
    `<name>`, in `out_dir/dataset_info.json` (added to the entries already there), where `<name>`
    is the folder's name. Train with `dataset_dir: out_dir` and `dataset: <name>`.

    Args:
        shape: "alpaca" (the default; multi-turn samples keep their earlier turns in `history`
            and their system message in `system`) or "messages" (LLaMA-Factory's sharegpt
            formatting, OpenAI role/content tags, a system message first when there is one).
        with_scores: add miwv, zero_shot_loss, one_shot_loss and neighbour_similarity columns
            (LLaMA-Factory ignores them). The samples' other extra fields are not written.
    """
    out_dir = Path(out_dir)
    if out_dir.suffix or out_dir.is_file():
        raise ArgumentError("a LLaMA-Factory dataset is a folder: give {0} a folder name, not a file", "out")
    shape = shape or "alpaca"
    if shape not in LLAMAFACTORY_COLUMNS:
        raise ArgumentError(f"{{0}} must be one of {', '.join(LLAMAFACTORY_COLUMNS)}", "shape", detail=f"got {shape!r}")
    info_path = out_dir / "dataset_info.json"
    info = _read_dataset_info(info_path)
    name = out_dir.name
    rows = _rows(catalog, sample_ids, scorer_id, embedder_id)
    records = [_llamafactory_record(r, shape, with_scores) for r in rows]
    entry = {"file_name": f"{name}.jsonl", "columns": LLAMAFACTORY_COLUMNS[shape]}
    if shape == "messages":
        entry.update(formatting="sharegpt", tags=LLAMAFACTORY_TAGS)
    with _atomic(out_dir / entry["file_name"]) as staging:
        with open(staging, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with _atomic(info_path) as staging:
        staging.write_text(json.dumps({**info, name: entry}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return Exported(out_dir, "llamafactory", shape, len(records))


def _read_dataset_info(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not a JSON object of dataset descriptions ({error}); move it aside") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} is not a JSON object of dataset descriptions; move it aside")
    return info


def _llamafactory_record(row: dict, shape: str, with_scores: bool) -> dict:
    messages = [(m["role"], m["content"]) for m in row["messages"]]
    if shape == "messages":
        record = {"messages": [{"role": role, "content": content} for role, content in messages]}
    else:
        system = messages[0][1] if messages[0][0] == "system" else ""
        turns = [content for role, content in messages if role != "system"]  # user, assistant, user, ...
        history = [[turns[i], turns[i + 1]] for i in range(0, len(turns) - 2, 2)]
        if row["instruction"] is not None:
            prompt, query = row["instruction"], row["input"]
        else:
            prompt, query = turns[-2], ""
        record = {"instruction": prompt, "input": query, "output": turns[-1], "system": system, "history": history}
    if with_scores:
        record.update({field: row[field] for field in SCORE_FIELDS})
    return record


def export_selected(
    catalog: Catalog,
    sample_ids: list[int],
    out: str | Path,
    file_format: str | None = None,
    shape: str | None = None,
    with_scores: bool = False,
    scorer_id: int | None = None,
    embedder_id: int | None = None,
    for_: str | None = None,
) -> Exported:
    """`export_samples`, or, when `for_` names a trainer (EXPORT_TARGETS), its own dataset layout."""
    if for_ is None:
        return export_samples(catalog, sample_ids, out, file_format, shape, with_scores, scorer_id, embedder_id)
    if for_ == "llamafactory":
        return export_llamafactory(catalog, sample_ids, out, shape, with_scores, scorer_id, embedder_id)
    raise ArgumentError(f"{{0}} must be one of {', '.join(EXPORT_TARGETS)}", "for_", detail=f"got {for_!r}")
