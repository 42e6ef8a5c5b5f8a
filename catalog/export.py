"""Writing a selection out for trainers: JSONL, Parquet or a Hugging Face `datasets` folder.

Rows come back as the user had them (Alpaca fields or messages, plus every extra field),
optionally with the scores. A user turn that the trainer builds from text we write (a messages
list, a LLaMA-Factory row) is written as the selection's scorer rendered it, so the trainer
trains on the prompt that was scored; where a shape cannot express that prompt, the export
says so (`Exported.note`). JSON output is strict: NaN and infinities are written as null.

Writing goes to a staging path beside the target and is renamed into place, so a crash never
leaves a half-written file at --out; an existing folder is replaced only when this tool wrote
it, and never anything inside the catalog.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa

from catalog import db
from catalog.choices import EXPORT_FORMATS, EXPORT_TARGETS
from catalog.errors import ArgumentError, UserError
from catalog.records import LLAMA_FACTORY_INPUT_SEPARATOR, alpaca_user_text
from catalog.score import Messages, messages_of
from catalog.store import Catalog

SCORE_FIELDS = ("miwv", "zero_shot_loss", "one_shot_loss", "neighbour_similarity")
MARKER = ".miwv-export"  # inside every export folder this tool writes: only such a folder may be replaced
STAGING_PREFIX = ".miwv-staging-"
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-[a-z0-9_]{8}-.+")
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".gz", ".arrow")  # not a folder target's name


@dataclass(frozen=True)
class Exported:
    path: Path
    file_format: str
    shape: str
    rows: int
    note: str | None = None  # where the trainer's prompt cannot be the scored one, why and what to use


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
    if file_format not in EXPORT_FORMATS + EXPORT_TARGETS:
        raise UserError(f"unknown format {file_format!r}; use one of {', '.join(EXPORT_FORMATS + EXPORT_TARGETS)}")
    if file_format in EXPORT_TARGETS and (out.suffix.lower() in DATA_FILE_SUFFIXES or out.is_file()):
        raise ArgumentError(f"a {file_format} dataset is a folder: give {{0}} a folder name, not a file", "out")
    check_ours(catalog, out, "nothing was selected or recorded")
    if out.exists() and not out.is_dir() and not out.is_file():
        raise UserError(f"--out {out} is not a regular file; choose another name")
    return Target(out, file_format)


def check_ours(catalog: Catalog, out: Path, undone: str) -> None:
    """Refuse an `out` inside the catalog, or an existing folder this tool did not write (one
    without MARKER): `select --out` and `report --out` write only there. `undone`: what the
    refusal left undone, for its message."""
    resolved, catalog_dir = out.resolve(), catalog.path.resolve()
    if resolved == catalog_dir or catalog_dir in resolved.parents:
        raise UserError(f"--out {out} is inside the catalog {catalog.path}; choose a path outside it ({undone})")
    if out.is_dir() and not (out / MARKER).is_file():
        raise UserError(
            f"--out {out} is an existing folder this tool did not write; it is left untouched: "
            f"choose a new name ({undone})"
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
    scope_dataset: str = "",
) -> Exported:
    """Write `sample_ids`, in that order, to `out` (see write_samples), through a staging path."""
    target = check_target(catalog, out, file_format)
    with staged(target.path) as stage:
        return write_samples(
            catalog, sample_ids, target, stage.path, shape, with_scores, scorer_id, embedder_id, scope_dataset
        )


def write_samples(
    catalog: Catalog,
    sample_ids: list[int],
    target: Target,
    path: Path,
    shape: str | None = None,
    with_scores: bool = False,
    scorer_id: int | None = None,
    embedder_id: int | None = None,
    scope_dataset: str = "",
) -> Exported:
    """Write `sample_ids`, in that order, to `path` (a staging path for `target`).

    Args:
        shape: "alpaca" (instruction, input, output) or "messages"; default alpaca when every
            sample is one Alpaca exchange.
        with_scores: add miwv, zero_shot_loss, one_shot_loss and neighbour_similarity (from the
            scores of `scorer_id` with `embedder_id`'s neighbours in the scope `scope_dataset`: '' for
            catalog-wide examples, else a dataset's).

    A `llamafactory` target is a folder LLaMA-Factory trains from directly (see _write_llamafactory).
    Only current samples are written: members of a recorded selection that have left the catalog
    since (retired or purged) are left out, and the note says how many.
    """
    rows, template = _rows(catalog, sample_ids, scorer_id, embedder_id, scope_dataset)
    gone = _gone(len(sample_ids), len(rows))
    if target.file_format == "llamafactory":
        return _with_note(_write_llamafactory(rows, template, target, path, shape, with_scores), gone)
    shape, records = _shaped_records(rows, template, shape, with_scores)
    if target.file_format == "jsonl":
        _write_jsonl(path, records)
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
    return Exported(target.path, target.file_format, shape, len(records), _joined(gone, _note(rows, template, shape)))


def _gone(asked: int, found: int) -> str | None:
    """The note for members no longer in the catalog, None when every one was found."""
    if asked == found:
        return None
    return (
        f"{asked - found} of {asked} members have left the catalog since the selection (retired or purged) "
        "and were not written"
    )


def _joined(*notes: str | None) -> str | None:
    return "; ".join(note for note in notes if note) or None


def _with_note(exported: Exported, note: str | None) -> Exported:
    return replace(exported, note=_joined(note, exported.note))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(_finite(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records)


def _finite(value):
    """`value` with every NaN and infinity (JSON has none; strict parsers reject them) as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _rows(
    catalog: Catalog, sample_ids: list[int], scorer_id: int | None, embedder_id: int | None, scope_dataset: str
) -> tuple[list[dict], str | None]:
    """The current samples among `sample_ids` (through the `samples` view: retired and purged ones are
    missing), in rank order, and the name of the template their scorer rendered them with."""
    order = pa.table({"sample_id": pa.array(sample_ids, pa.int64()), "rank": pa.array(range(len(sample_ids)))})
    with catalog.read() as conn, db.registered(conn, "wanted", order):
        scorer = db.execute(conn, "SELECT template FROM scorer WHERE scorer_id = $id", {"id": scorer_id})
        rows = db.records(
            conn,
            """
            SELECT s.instruction, s.input, s.output, s.messages, s.extra,
                   m.miwv, m.zero_shot_loss, m.one_shot_loss, m.similarity AS neighbour_similarity
            FROM wanted w
            JOIN samples s USING (sample_id)
            LEFT JOIN miwv_scores m
                   ON m.sample_id = w.sample_id AND m.scorer_id = $scorer AND m.embedder_id = $embedder
                  AND coalesce(m.scope_dataset, '') = $scope
            ORDER BY w.rank""",
            {"scorer": scorer_id, "embedder": embedder_id, "scope": scope_dataset},
        )
    for row in rows:
        row["messages"] = messages_of(row["messages"])
    return rows, scorer[0][0] if scorer else None


def scored_messages(row: dict, template: str | None) -> Messages:
    """The sample's messages with its last user turn as `template` rendered it: LLaMA-Factory's
    alpaca template (alpaca-lf) joins an Alpaca record's instruction and input with one newline,
    where the stored turn (which chat templates render) has a blank line."""
    messages = row["messages"]
    if template != "alpaca-lf" or row["instruction"] is None or not row["input"]:
        return messages
    user = alpaca_user_text(row["instruction"], row["input"], LLAMA_FACTORY_INPUT_SEPARATOR)
    return messages[:-2] + (("user", user), messages[-1])


def _lone_exchange(row: dict) -> bool:
    """One Alpaca exchange: Alpaca fields, no system message, no earlier turns."""
    return row["instruction"] is not None and len(row["messages"]) == 2


def _chat_template(template: str | None) -> bool:
    return template is not None and template not in ("alpaca", "alpaca-lf")


def _note(rows: list[dict], template: str | None, shape: str, trainer: str | None = None) -> str | None:
    """Why the trainer cannot build the scored prompt from this export, and what to use; None when it can."""
    if template == "alpaca" and trainer == "llamafactory":
        return (
            "scored with Stanford Alpaca's prompt (--template alpaca), which LLaMA-Factory has no template for: "
            "its alpaca template trains a different prompt (score with --template alpaca-lf to train with it)"
        )
    if template == "alpaca" and shape == "messages":
        return (
            "scored with Stanford Alpaca's prompt (--template alpaca), which a messages list cannot express: "
            "write --shape alpaca and train with Stanford Alpaca's train.py"
        )
    with_input = sum(1 for row in rows if row["instruction"] is not None and row["input"])
    if _chat_template(template) and shape == "alpaca" and trainer is None and with_input:
        return (
            f"{with_input} samples have an input: the scorer's chat template saw instruction and input joined by a "
            "blank line, and a trainer of Alpaca fields joins them its own way (LLaMA-Factory: one newline); "
            "--shape messages (or --for llamafactory) writes the user turns as scored"
        )
    return None


def _record(row: dict, template: str | None, shape: str, with_scores: bool) -> dict:
    if shape == "alpaca":
        record = {"instruction": row["instruction"], "input": row["input"], "output": row["output"]}
    else:
        record = {"messages": [{"role": role, "content": content} for role, content in scored_messages(row, template)]}
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


def export_table(
    catalog: Catalog,
    sample_ids: list[int],
    shape: str | None = None,
    with_scores: bool = False,
    scorer_id: int | None = None,
    embedder_id: int | None = None,
    scope_dataset: str = "",
) -> pa.Table:
    """The records `export_samples` writes, in memory, as one Arrow table (same arguments)."""
    rows, template = _rows(catalog, sample_ids, scorer_id, embedder_id, scope_dataset)
    return _table(_shaped_records(rows, template, shape, with_scores)[1])


def _shaped_records(
    rows: list[dict], template: str | None, shape: str | None, with_scores: bool
) -> tuple[str, list[dict]]:
    """(shape, records): alpaca by default when every row is one Alpaca exchange, else messages."""
    alpaca_ready = all(_lone_exchange(r) for r in rows)
    shape = shape or ("alpaca" if alpaca_ready else "messages")
    if shape == "alpaca" and not alpaca_ready:
        raise ArgumentError(
            "some selected samples are conversations (a system message or earlier turns), which Alpaca fields "
            "would drop; use {0} 'messages' (or --for llamafactory, whose rows keep system and history)",
            "shape",
        )
    return shape, [_record(r, template, shape, with_scores) for r in rows]


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


def _write_llamafactory(
    rows: list[dict], template: str | None, target: Target, path: Path, shape: str | None, with_scores: bool
) -> Exported:
    """A LLaMA-Factory dataset folder: `<name>.jsonl` and its `dataset_info.json` entry `<name>`,
    where `<name>` is the folder's name. Train with `dataset_dir: <folder>` and `dataset: <name>`.

    Args:
        template: the scorer's template: each row is written so that LLaMA-Factory builds the
            user turn the scorer saw (see _llamafactory_record).
        shape: "alpaca" (the default; multi-turn samples keep their earlier turns in `history`
            and their system message in `system`) or "messages" (LLaMA-Factory's sharegpt
            formatting, OpenAI role/content tags, a system message first when there is one).
        with_scores: add miwv, zero_shot_loss, one_shot_loss and neighbour_similarity columns
            (LLaMA-Factory ignores them). The samples' other extra fields are not written.
    """
    shape = shape or "alpaca"
    if shape not in LLAMAFACTORY_COLUMNS:
        raise ArgumentError(f"{{0}} must be one of {', '.join(LLAMAFACTORY_COLUMNS)}", "shape", detail=f"got {shape!r}")
    name = target.path.name
    entry = {"file_name": f"{name}.jsonl", "columns": LLAMAFACTORY_COLUMNS[shape]}
    if shape == "messages":
        entry.update(formatting="sharegpt", tags=LLAMAFACTORY_TAGS)
    path.mkdir()
    _write_jsonl(path / entry["file_name"], [_llamafactory_record(r, template, shape, with_scores) for r in rows])
    (path / "dataset_info.json").write_text(
        json.dumps({name: entry}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    (path / MARKER).write_text("written by miwv-catalog `select --out`; it may replace this folder\n")
    return Exported(target.path, "llamafactory", shape, len(rows), _note(rows, template, shape, "llamafactory"))


def _llamafactory_record(row: dict, template: str | None, shape: str, with_scores: bool) -> dict:
    """One row LLaMA-Factory trains on the scored prompt. The messages shape holds the user turn
    as scored. The alpaca shape keeps instruction and input apart, which LLaMA-Factory joins with
    one newline (as alpaca-lf scored them), except after a chat template, which saw them joined by
    a blank line: then `instruction` holds that whole turn and `input` is empty."""
    messages = scored_messages(row, template)
    if shape == "messages":
        record = {"messages": [{"role": role, "content": content} for role, content in messages]}
    else:
        system = messages[0][1] if messages[0][0] == "system" else ""
        turns = [content for role, content in messages if role != "system"]  # user, assistant, user, ...
        history = [[turns[i], turns[i + 1]] for i in range(0, len(turns) - 2, 2)]
        if row["instruction"] is not None and not _chat_template(template):
            prompt, query = row["instruction"], row["input"]
        else:
            prompt, query = turns[-2], ""
        record = {"instruction": prompt, "input": query, "output": turns[-1], "system": system, "history": history}
    if with_scores:
        record.update({field: row[field] for field in SCORE_FIELDS})
    return record
