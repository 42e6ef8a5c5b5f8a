"""Test sets: prompts (and optional reference answers) that evaluate training runs, stored once.

A test set is named ("vicuna": the shared Vicuna 80 questions) or a local JSON Lines file of
prompts: each row holds the prompt in `instruction`, `prompt` or `text`, an optional `input`,
and an optional reference answer in `output` or `reference`. A prompt's id is a 63-bit hash of
the test set's name and the prompt text, so loading a set again stores nothing new.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from catalog.db import execute, insert_arrow
from catalog.errors import UserError
from catalog.records import RecordError, Sample, alpaca_user_text, to_sample
from catalog.store import Catalog

SHARED_DATA = Path(os.environ.get("MIWV_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NAMED = {"vicuna": "test/vicuna_80.jsonl"}  # under SHARED_DATA (provenance: its README.md)
PROMPT_FIELDS = ("instruction", "prompt", "text")
REFERENCE_FIELDS = ("output", "reference")


@dataclass(frozen=True)
class TestPrompt:
    """One prompt of a test set; `sample` is the catalog sample its row would be (None without a reference)."""

    prompt_id: int
    testset: str
    position: int
    prompt: str  # the user turn: instruction, blank line, input (as ingest stores it)
    reference: str | None
    source: str
    sample: Sample | None = None


def prompt_id(testset: str, text: str) -> int:
    """63-bit id of a prompt: the first 8 bytes of SHA-256 over name and text, top bit cleared."""
    digest = hashlib.sha256(f"{testset}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def read_testset(name_or_path: str) -> list[TestPrompt]:
    """The prompts of a named test set or a local JSONL file; UserError naming a bad row or name."""
    path = SHARED_DATA / NAMED[name_or_path] if name_or_path in NAMED else Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(NAMED)
        raise UserError(f"test set {name_or_path!r} is neither a known name ({known}) nor a file (looked at {path})")
    name = name_or_path if name_or_path in NAMED else path.stem
    prompts = [_prompt(name, position, line, path) for position, line in enumerate(_lines(path))]
    if not prompts:
        raise UserError(f"test set {path} holds no prompts")
    return prompts


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read test set {path}: {error}") from None


def _prompt(testset: str, position: int, line: str, path: Path) -> TestPrompt:
    """One row: its prompt field, optional input and reference; the sample it would be when it has one."""
    where = f"test set {path} line {position + 1}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{where} is not JSON: {error.msg}") from None
    found = [row[key] for key in PROMPT_FIELDS if isinstance(row, dict) and isinstance(row.get(key), str)]
    if not found or not found[0].strip():
        raise UserError(f"{where} has no prompt: give it a string field {', '.join(PROMPT_FIELDS)}")
    instruction, input = found[0], row.get("input") or ""
    reference = next((row[key] for key in REFERENCE_FIELDS if isinstance(row.get(key), str)), None)
    sample = None
    if reference is not None:
        try:
            sample = to_sample({"instruction": instruction, "input": input, "output": reference}, "alpaca")
        except RecordError as error:
            raise UserError(f"{where}: {error}") from None
    text = alpaca_user_text(instruction, input)
    return TestPrompt(prompt_id(testset, text), testset, position, text, reference, str(path), sample)


def store_testset(catalog: Catalog, prompts: list[TestPrompt]) -> int:
    """Store the prompts not yet in the catalog; returns how many were new."""
    table = pa.table(
        {
            "prompt_id": pa.array([p.prompt_id for p in prompts], pa.int64()),
            "testset": [p.testset for p in prompts],
            "position": pa.array([p.position for p in prompts], pa.int32()),
            "prompt": [p.prompt for p in prompts],
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
