"""LLaMA-Factory flavours on real rows: Alpaca `system` + `history`, ShareGPT top-level `system`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog import Catalog, db
from catalog.records import RecordError, alpaca_user_text, to_sample
from tests.conftest import SHARED_DATA, write_jsonl

SYSTEM = "You are a careful assistant. Answer the last question."


def shared_rows(n: int, name: str = "dolly_3k_alpagasus.jsonl") -> list[dict]:
    """The first `n` real rows of a shared file whose instruction and output are not blank."""
    rows = []
    with open(SHARED_DATA / name, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["instruction"].strip() and record["output"].strip():
                rows.append(record)
            if len(rows) == n:
                return rows
    return rows


def as_llama_factory(rows: list[dict], turns: int) -> list[dict]:
    """Each row becomes the current turn of a conversation whose history is the `turns - 1` rows before it."""
    records = []
    for i in range(turns - 1, len(rows)):
        history = [[alpaca_user_text(r["instruction"], r["input"]), r["output"]] for r in rows[i - turns + 1 : i]]
        records.append({**rows[i], "system": SYSTEM, "history": history})
    return records


def expected_messages(record: dict) -> list[dict]:
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for user, assistant in record.get("history", []):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    user = alpaca_user_text(record["instruction"], record["input"])
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def as_sharegpt_with_system(record: dict) -> dict:
    names = {"user": "human", "assistant": "gpt"}
    turns = [{"from": names[m["role"]], "value": m["content"]} for m in expected_messages(record)[1:]]
    return {"system": record["system"], "conversations": turns}


def stored(catalog_dir: Path) -> dict[int, dict]:
    with Catalog(catalog_dir).read() as conn:
        rows = db.records(conn, "SELECT * FROM samples")
    return {row["sample_id"]: row for row in rows}


def test_alpaca_system_and_history_become_one_multi_turn_sample(tmp_path, catalog_dir, cli_run):
    records = as_llama_factory(shared_rows(40), turns=3)
    result = json.loads(cli_run("ingest", write_jsonl(tmp_path / "lf.jsonl", records), "--json").output)
    assert (result["record_shape"], result["rows_new"]) == ("alpaca", len(records))

    samples = stored(catalog_dir)
    for record in records:
        sample = samples[to_sample(record, "alpaca").sample_id]
        assert sample["messages"] == expected_messages(record)  # system, history turns, this turn: in order
        assert sample["n_turns"] == 3 and sample["response"] == record["output"]
        assert sample["user_text"] == record["history"][0][0]  # the first user message, as for every conversation
        # the last exchange's Alpaca fields are kept apart, so each template joins them as its trainer does
        fields = (sample["instruction"], sample["input"], sample["output"])
        assert fields == (record["instruction"], record.get("input") or "", record["output"])
        assert json.loads(sample["extra"]) == {"category": record["category"]}  # system/history are content


def test_history_and_system_change_the_id_and_match_the_same_conversation_as_sharegpt(tmp_path, catalog_dir, cli_run):
    records = as_llama_factory(shared_rows(30), turns=2)
    lf = {to_sample(r, "alpaca").sample_id for r in records}
    flat = {
        to_sample({k: v for k, v in r.items() if k not in ("system", "history")}, "alpaca").sample_id for r in records
    }
    no_system = {to_sample({**r, "system": ""}, "alpaca").sample_id for r in records}
    assert len(lf) == len(records) and not lf & flat and not lf & no_system and not flat & no_system

    cli_run("ingest", write_jsonl(tmp_path / "lf.jsonl", records), "--dataset", "lf")
    chat = [as_sharegpt_with_system(r) for r in records]
    again = json.loads(
        cli_run("ingest", write_jsonl(tmp_path / "chat.jsonl", chat), "--dataset", "sg", "--json").output
    )
    assert (again["record_shape"], again["rows_new"], again["rows_duplicate"]) == ("sharegpt", 0, len(records))
    assert set(stored(catalog_dir)) == lf


def test_empty_system_and_history_leave_a_plain_alpaca_sample():
    for record in shared_rows(20):
        plain = to_sample(record, "alpaca")
        padded = to_sample({**record, "system": "", "history": []}, "alpaca")
        assert padded == plain and padded.instruction == record["instruction"]


def test_sharegpt_top_level_system_leads_the_messages(tmp_path, catalog_dir, cli_run):
    rows = shared_rows(10, "gpteacher_roleplay_dedupe.jsonl")
    records = [as_sharegpt_with_system({**r, "system": SYSTEM, "history": []}) for r in rows]
    cli_run("ingest", write_jsonl(tmp_path / "sg.jsonl", records))
    for record in records:
        sample = stored(catalog_dir)[to_sample(record, "sharegpt").sample_id]
        assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant"]
        assert sample["messages"][0]["content"] == SYSTEM and sample["extra"] is None


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"history": "hi"}, r"field 'history' must be a list of \[instruction, response\] pairs, got str"),
        ({"history": [["only one"]]}, r"history\[0\] must be an \[instruction, response\] pair"),
        ({"history": [["q", "a"], ["q", 3]]}, r"history\[1\] must be an \[instruction, response\] pair"),
        ({"history": [["", "a"]]}, "empty first user turn"),
        ({"system": ["Be brief."]}, "field 'system' must be a string, got list"),
        ({"system": "Be brief.", "output": ""}, "empty response"),
    ],
)
def test_invalid_llama_factory_fields_name_the_problem(fields, problem):
    record = {**shared_rows(1)[0], **fields}
    with pytest.raises(RecordError, match=problem):
        to_sample(record, "alpaca")


def test_a_top_level_system_and_a_system_turn_are_refused():
    record = as_sharegpt_with_system({**shared_rows(1)[0], "system": SYSTEM, "history": []})
    record["conversations"].insert(0, {"from": "system", "value": "Another."})
    with pytest.raises(RecordError, match="a top-level 'system' and a system turn"):
        to_sample(record, "sharegpt")
