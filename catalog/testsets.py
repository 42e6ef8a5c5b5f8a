"""Test sets: prompts (and optional reference answers) that evaluate training runs, stored once.

A test set is named (NAMED: the paper's Vicuna 80, Koala 180, WizardLM 218, Self-instruct 252 and
LIMA 300, and AlpacaEval's 805) or a local file of prompts in a format `ingest` reads (.jsonl,
.json, .parquet, .csv): each row holds the prompt in `instruction`, `prompt` or `text`, an
optional `input`, and an optional reference answer in `output` or `reference`.

A named set published on the Hugging Face Hub is read from its data file there (the local HF
cache offline, the Hub online: `hf_sources.hub_dataset_file`); one published only on GitHub is
read from the shared data folder, where its authors' file is to be saved. A named set must hold
its published number of prompts: a file with another count is another set, and its rows would be
stored and compared under the paper's name.

Instruction and input are kept apart, so a template renders them as its trainer does (Alpaca's
"### Input:" section). A prompt's id is a 63-bit hash of the set's name, instruction and input,
so loading a set again stores nothing new; a prompt repeated within a set is kept once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from catalog.db import execute, insert_arrow
from catalog.errors import InvalidInput, UserError
from catalog.hf_sources import hub_dataset_file
from catalog.readers import Row, RowSource, file_format_of, name_text, read_file
from catalog.records import RecordError, Sample, alpaca_user_text, to_sample
from catalog.store import Catalog

SHARED_DATA = Path(os.environ.get("MIWV_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

FieldPath = tuple[str | int, ...]  # keys and list indexes from a row to a value: ("instances", 0, "input")


@dataclass(frozen=True)
class Fields:
    """Where a row holds its prompt, input and reference answer: the first path present wins."""

    instruction: tuple[FieldPath, ...]
    input: tuple[FieldPath, ...] = ()
    reference: tuple[FieldPath, ...] = ()


FILE_FIELDS = Fields((("instruction",), ("prompt",), ("text",)), (("input",),), (("output",), ("reference",)))


@dataclass(frozen=True)
class NamedSet:
    """One of the paper's test sets: its Hub data file, or (not on the Hub) its file under SHARED_DATA
    and where its authors publish it; the number of prompts it was published with; its fields."""

    count: int
    fields: Fields
    hub: tuple[str, str] | None = None  # (dataset repository, data file in it)
    local: str | None = None  # under SHARED_DATA
    origin: str = ""  # where to download the local file from


NAMED = {
    "vicuna": NamedSet(
        80,
        Fields((("instruction",), ("text",)), (("input",),)),
        local="test/vicuna_80.jsonl",
        origin="https://github.com/tianyi-lab/Cherry_LLM/raw/main/evaluation/test_data/vicuna_test_set.jsonl",
    ),
    "koala": NamedSet(
        180,
        Fields((("prompt",),)),
        local="test/koala_test_set.jsonl",
        origin="https://github.com/arnav-gudibande/koala-test-set/raw/main/koala_test_set.jsonl",
    ),
    "wizardlm": NamedSet(
        218,
        Fields((("Instruction",),)),
        local="test/WizardLM_testset.jsonl",
        origin="https://github.com/nlpxucan/WizardLM/raw/main/WizardLM/data/WizardLM_testset.jsonl",
    ),
    "self-instruct": NamedSet(
        252,
        Fields((("instruction",),), (("instances", 0, "input"),), (("instances", 0, "output"),)),
        hub=("HuggingFaceH4/self-instruct-eval", "human-eval.jsonl"),
    ),
    "lima": NamedSet(300, Fields((("conversations", 0), ("conversations",))), hub=("GAIR/lima", "test.jsonl")),
    "alpaca-eval": NamedSet(
        805, Fields((("instruction",),), reference=(("output",),)), hub=("tatsu-lab/alpaca_eval", "alpaca_eval.json")
    ),
}


@dataclass(frozen=True)
class TestPrompt:
    """One prompt of a test set; `sample` is the catalog sample its row would be (None without a reference)."""

    prompt_id: int
    testset: str
    position: int
    instruction: str
    input: str  # "" when the prompt has none
    reference: str | None
    source: str
    sample: Sample | None = None

    @property
    def prompt(self) -> str:
        """The user turn as ingest stores it (instruction, blank line, input): what a chat template and a judge see."""
        return alpaca_user_text(self.instruction, self.input)


def prompt_id(testset: str, instruction: str, input: str = "") -> int:
    """63-bit id of a prompt: the first 8 bytes of SHA-256 over the set's name, instruction and input."""
    text = f"{testset}\0{instruction}" + (f"\0{input}" if input else "")
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def read_testset(name_or_path: str) -> list[TestPrompt]:
    """The prompts of a named test set or a local file; UserError naming a bad row, name or count."""
    if name_or_path in NAMED:
        return _named(name_or_path, NAMED[name_or_path])
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(NAMED)
        raise UserError(f"test set {name_or_path!r} is neither a known name ({known}) nor a file (looked at {path})")
    prompts = _prompts(path.stem, _source(path, name_text(path)), str(path), FILE_FIELDS)
    if not prompts:
        raise UserError(f"test set {path} holds no prompts")
    return _unique(prompts)


def _named(name: str, spec: NamedSet) -> list[TestPrompt]:
    """A named set from the Hub or SHARED_DATA, refused unless it holds its published number of prompts."""
    if spec.hub is not None:
        repo_id, filename = spec.hub
        path = hub_dataset_file(repo_id, filename, f"test set {name!r}", "evaluate")
        stored_as = f"hf:{repo_id}@{_snapshot(path, filename)}/{filename}"
    else:
        path = SHARED_DATA / spec.local
        if not path.is_file():
            raise UserError(
                f"test set {name!r} is not on the Hugging Face Hub and not at {path}: "
                f"save its authors' file there ({spec.origin}), or pass a file's path"
            )
        stored_as = str(path)
    prompts = _prompts(name, _source(path, f"{name!r} ({stored_as})"), stored_as, spec.fields)
    if len(prompts) != spec.count:
        raise UserError(
            f"test set {name!r} ({stored_as}) has {len(prompts)} prompts, not the {spec.count} it was published "
            "with: it is another set; pass its path to evaluate it under a name of its own"
        )
    return _unique(prompts)


def _snapshot(path: Path, filename: str) -> str:
    """The commit of the HF cache snapshot that `path` (the repository's `filename`) lies in."""
    return path.parents[len(Path(filename).parts) - 1].name


def _source(path: Path, label: str) -> RowSource:
    """The file's rows as `ingest` reads them (a JSON array, JSON Lines, Parquet or CSV)."""
    try:
        file_format_of(path)
    except InvalidInput:
        formats = ".jsonl, .json, .parquet or .csv file (the text ones may be .gz)"
        raise UserError(f"test set {label}: not a {formats}") from None
    return replace(read_file(path), label=label)


def _prompts(testset: str, source: RowSource, stored_as: str, fields: Fields) -> list[TestPrompt]:
    return [_prompt(testset, position, row, source, stored_as, fields) for position, row in enumerate(source.rows)]


def _prompt(testset: str, position: int, row: Row, source: RowSource, stored_as: str, fields: Fields) -> TestPrompt:
    """One row: its prompt, input and reference; the sample it would be when it has a reference."""
    where = f"test set {source.label} {source.where(row)}"
    if row.error is not None:
        raise UserError(f"{where}: {row.error}")
    instruction = _text(row.record, fields.instruction, where)
    if instruction is None or not instruction.strip():
        names = ", ".join(map(_named_path, fields.instruction))
        raise UserError(f"{where} has no prompt: give it a string field {names}")
    input = _text(row.record, fields.input, where) or ""
    reference = _text(row.record, fields.reference, where)
    reference = reference if reference and reference.strip() else None
    sample = None
    if reference is not None:
        try:
            sample = to_sample({"instruction": instruction, "input": input, "output": reference}, "alpaca")
        except RecordError as error:
            raise UserError(f"{where}: {error}") from None
    return TestPrompt(
        prompt_id(testset, instruction, input), testset, position, instruction, input, reference, stored_as, sample
    )


def _text(record: Any, paths: tuple[FieldPath, ...], where: str) -> str | None:
    """The value at the first of `paths` the record has; UserError when that value is not a string."""
    for path in paths:
        value = _at(record, path)
        if value is None:
            continue
        if not isinstance(value, str):
            raise UserError(f"{where}: field {_named_path(path)} must be a string, got {type(value).__name__}")
        return value
    return None


def _at(value: Any, path: FieldPath) -> Any:
    """The value `path` leads to from `value`, None where a key or index is missing."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(value, list) or key >= len(value):
                return None
        elif not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _named_path(path: FieldPath) -> str:
    """A field path as a message names it: instances[0].input."""
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")


def _unique(prompts: list[TestPrompt]) -> list[TestPrompt]:
    """Each prompt once (its first row): a repeated one would be generated and judged twice under one id."""
    first: dict[int, TestPrompt] = {}
    for prompt in prompts:
        first.setdefault(prompt.prompt_id, prompt)
    return list(first.values())


def store_testset(catalog: Catalog, prompts: list[TestPrompt]) -> int:
    """Store the prompts not yet in the catalog; returns how many were new."""
    table = pa.table(
        {
            "prompt_id": pa.array([p.prompt_id for p in prompts], pa.int64()),
            "testset": [p.testset for p in prompts],
            "position": pa.array([p.position for p in prompts], pa.int32()),
            "prompt": [p.instruction for p in prompts],
            "input": [p.input for p in prompts],
            "reference": pa.array([p.reference for p in prompts], pa.string()),
            "source": [p.source for p in prompts],
        }
    )
    with catalog.write() as conn:
        before = execute(conn, "SELECT count(*) FROM test_prompt")[0][0]
        insert_arrow(conn, "test_prompt", table, keep_existing=True)
        return execute(conn, "SELECT count(*) FROM test_prompt")[0][0] - before


def overlapping_samples(catalog: Catalog, selection_id: int, sample_ids: list[int]) -> int:
    """How many of `sample_ids` are members of the selection (what a run trained on)."""
    with catalog.read() as conn:
        rows = execute(
            conn,
            "SELECT count(*) FROM selection_member WHERE selection_id = $id AND sample_id IN (SELECT unnest($ids))",
            {"id": selection_id, "ids": sample_ids},
        )
    return rows[0][0]
