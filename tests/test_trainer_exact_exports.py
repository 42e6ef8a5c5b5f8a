"""An export trains on the prompt that was scored (issue 20): what LLaMA-Factory builds from each
exported row is the scorer's zero-shot sequence, id for id.

LLaMA-Factory's side is written out here from its source (src/llamafactory/data: the alpaca
converter joins instruction and input with "\\n"; template `alpaca` encodes the system text
(its default when the row has none or an empty one), then per turn "### Instruction:\\n{content}
\\n\\n### Response:\\n", and after each response EOS and "\\n\\n", every piece on its own), never
produced by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog.records import to_sample
from scoring.sequences import SequenceBuilder
from tests.conftest import CliRun, fixture_records, write_jsonl

LF_DEFAULT_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)


def llama_factory_rows() -> list[dict]:
    """Real fixture rows with an input, as plain Alpaca rows and in LLaMA-Factory's flavours."""
    with_input = [r for r in fixture_records() if r.get("input")][:4]
    without = [r for r in fixture_records() if not r.get("input")][:2]
    first, second, third, fourth = with_input
    return [
        first,
        {**second, "system": "You answer tersely."},
        {**third, "history": [[without[0]["instruction"], without[0]["output"]]]},
        {**fourth, "system": " "},  # whitespace-only: LLaMA-Factory's system text, no default header
        {**without[1], "system": " ", "history": [[first["instruction"], first["output"]]]},
    ]


def score_lf_rows(cli_run: CliRun) -> None:
    """Fixture rows plus the LLaMA-Factory rows (dataset "lf"), scored by SmolLM2 with alpaca-lf
    (scorer 1) and its chat template (scorer 2), and one sample with Stanford's alpaca (scorer 3)."""
    folder = cli_run.catalog.parent
    assert cli_run("ingest", write_jsonl(folder / "mixed.jsonl", fixture_records()[:40])).exit_code == 0
    assert cli_run("ingest", write_jsonl(folder / "lf.jsonl", llama_factory_rows())).exit_code == 0
    assert cli_run("embed").exit_code == 0
    for template, limit in (("alpaca-lf", 5), ("chat", 5), ("alpaca", 1)):
        scored = cli_run(
            "score", "--model", "smollm2-135m", "--dataset", "lf", "--template", template, "--limit", limit
        )
        assert scored.exit_code == 0, scored.output


@pytest.fixture
def lf_catalog(catalog_built_by, cli_run) -> CliRun:
    catalog_built_by(score_lf_rows)
    return cli_run


def export(cli_run: CliRun, out: Path, scorer: int, *options: str) -> tuple[dict, list[dict]]:
    """Every sample of dataset "lf", written by `select` with `scorer`'s template: (output, rows)."""
    result = cli_run.json(
        "select", "--model", "smollm2-135m", "--scorer", scorer, "--strategy", "random", "--top-percent", "100",
        "--dataset", "lf", "--out", out, *options,
    )  # fmt: skip
    data = out / f"{out.name}.jsonl" if "--for" in options else out
    return result["output"], [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]


def conversation_llama_factory_builds(row: dict) -> list[tuple[str, str]]:
    """The conversation LLaMA-Factory's converter makes of an exported row (alpaca or sharegpt formatting)."""
    if "messages" in row:
        return [(m["role"], m["content"]) for m in row["messages"]]
    messages = [("system", row["system"])] if row.get("system") else []
    for user, assistant in row.get("history") or []:
        messages += [("user", user), ("assistant", assistant)]
    query = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    return messages + [("user", query), ("assistant", row["output"])]


def llama_factory_alpaca_ids(tokenizer, conversation: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(prompt ids, trained ids of the last response) as LLaMA-Factory's `alpaca` template encodes them."""

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    system = conversation[0][1] if conversation[0][0] == "system" else ""
    turns = [content for role, content in conversation if role != "system"]
    prompt = encode(system or LF_DEFAULT_SYSTEM)
    for i in range(0, len(turns), 2):
        prompt += encode(f"### Instruction:\n{turns[i]}\n\n### Response:\n")
        response = encode(turns[i + 1]) + [tokenizer.eos_token_id] + encode("\n\n")
        if i + 2 < len(turns):
            prompt += response
    return prompt, response


def scored_zero_shot(tokenizer, template: str, record: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, scored ids) of the scorer's zero-shot pass over `record` as the catalog stores it."""
    sample = to_sample(record, "alpaca")
    fields = (sample.instruction, sample.input) if sample.instruction is not None else None
    sequence = SequenceBuilder(tokenizer, template, 4096).zero_shot(sample.messages, fields)
    return sequence.ids[: -sequence.n_response], sequence.ids[-sequence.n_response :]


def by_response(rows: list[dict]) -> dict[str, dict]:
    return {row["output"] if "output" in row else row["messages"][-1]["content"]: row for row in rows}


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [("--for", "llamafactory"), ("--for", "llamafactory", "--shape", "messages"), ("--shape", "messages")],
    ids=["llamafactory-alpaca", "llamafactory-messages", "messages-jsonl"],
)
def test_llamafactory_trains_the_ids_alpaca_lf_scored(lf_catalog, smollm2, tmp_path, options):
    _, tokenizer, _ = smollm2
    written, rows = export(lf_catalog, tmp_path / ("picked" if "--for" in options else "picked.jsonl"), 1, *options)
    assert written["note"] is None and written["rows"] == 5
    exported = by_response(rows)
    for record in llama_factory_rows():
        prompt, trained = llama_factory_alpaca_ids(
            tokenizer, conversation_llama_factory_builds(exported[record["output"]])
        )
        scored_prompt, scored = scored_zero_shot(tokenizer, "alpaca-lf", record)
        assert prompt == scored_prompt, record
        # and the user's own row, trained by LLaMA-Factory as it is, is what was scored too
        assert llama_factory_alpaca_ids(tokenizer, conversation_llama_factory_builds(record))[0] == scored_prompt
        # LLaMA-Factory trains the scored ids, then EOS and "\n\n" (both trained): the scorer scores the response alone
        assert trained == scored + [tokenizer.eos_token_id] + tokenizer.encode("\n\n", add_special_tokens=False)


@pytest.mark.slow
@pytest.mark.parametrize("options", [("--for", "llamafactory"), ("--for", "llamafactory", "--shape", "messages")])
def test_after_a_chat_template_llamafactory_builds_the_conversation_that_was_scored(lf_catalog, tmp_path, options):
    """A chat template rendered the stored user turn (instruction, blank line, input): LLaMA-Factory,
    whichever chat template it trains with, must build that same conversation from the row."""
    written, rows = export(lf_catalog, tmp_path / "picked", 2, *options)
    assert written["note"] is None
    exported = by_response(rows)
    for record in llama_factory_rows():
        built = conversation_llama_factory_builds(exported[record["output"]])
        assert tuple(built) == tuple(to_sample(record, "alpaca").messages)


@pytest.mark.slow
def test_a_shape_that_cannot_carry_the_scored_prompt_says_so(lf_catalog, tmp_path):
    chat_alpaca, _ = export(
        lf_catalog, tmp_path / "chat.jsonl", 2, "--where", "n_turns = 1 AND messages[1].role = 'user'"
    )
    assert "joined by a blank line" in chat_alpaca["note"] and "--shape messages" in chat_alpaca["note"]
    stanford_lf, _ = export(lf_catalog, tmp_path / "stanford", 3, "--for", "llamafactory")
    assert "LLaMA-Factory has no template" in stanford_lf["note"]
    stanford_messages, _ = export(lf_catalog, tmp_path / "stanford.jsonl", 3, "--shape", "messages")
    assert "a messages list cannot express" in stanford_messages["note"]
    printed = lf_catalog(
        "select", "--model", "smollm2-135m", "--scorer", 3, "--strategy", "random", "--top-k", 1,
        "--out", tmp_path / "again", "--for", "llamafactory",
    )  # fmt: skip
    assert printed.exit_code == 0 and "note: scored with Stanford Alpaca's prompt" in printed.stdout


def test_a_whitespace_only_system_is_content_and_an_empty_one_is_absent():
    row = {"instruction": "Say hello.", "output": "Hello!"}
    assert to_sample({**row, "system": " "}, "alpaca").messages == (
        ("system", " "),
        ("user", "Say hello."),
        ("assistant", "Hello!"),
    )
    assert to_sample({**row, "system": ""}, "alpaca") == to_sample(row, "alpaca")


def test_a_llama_factory_conversation_keeps_its_last_instruction_and_input_apart():
    sample = to_sample(
        {"instruction": "Translate.", "input": "Good morning", "output": "Bonjour", "system": "Be brief."}, "alpaca"
    )
    assert sample.messages[1] == ("user", "Translate.\n\nGood morning")  # stored (and embedded) as before
    assert (sample.instruction, sample.input, sample.output) == ("Translate.", "Good morning", "Bonjour")


@pytest.mark.parametrize("name", ["lf_data.v2", "run-0.5", "data.set"])
def test_a_llamafactory_folder_name_may_hold_a_dot(catalog_built_by, cli_run, tmp_path, name):
    from tests.test_api import ingest_mixed_and_tail

    catalog_built_by(ingest_mixed_and_tail)
    out = tmp_path / name
    result = cli_run.json("select", "--strategy", "random", "--top-k", "3", "--out", out, "--for", "llamafactory")
    assert result["output"]["rows"] == 3
    assert list(json.loads((out / "dataset_info.json").read_text())) == [name]
    assert len((out / f"{name}.jsonl").read_text().splitlines()) == 3
    for refused in ("x.jsonl", "x.parquet", "x.json"):
        failed = cli_run(
            "select", "--strategy", "random", "--top-k", "1", "--out", tmp_path / refused, "--for", "llamafactory"
        )
        assert failed.exit_code == 1 and "give --out a folder name, not a file" in failed.stderr


NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def test_jsonl_exports_are_strict_json_with_nan_and_infinity_as_null(catalog_dir, cli_run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fixture_records()[:3]
    table = pa.table(
        {
            "instruction": [r["instruction"] for r in rows],
            "input": [r.get("input") or "" for r in rows],
            "output": [r["output"] for r in rows],
            "rating": NON_FINITE,
            "scores": [[1.0, value] for value in NON_FINITE],
        }
    )
    pq.write_table(table, tmp_path / "rated.parquet")
    assert cli_run("ingest", tmp_path / "rated.parquet").exit_code == 0
    out = tmp_path / "out.jsonl"
    assert cli_run("select", "--strategy", "random", "--top-k", "3", "--out", out).exit_code == 0

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    records = [json.loads(line, parse_constant=refuse) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["rating"] for r in records] == [None] * 3
    assert [r["scores"] for r in records] == [[1.0, None]] * 3
