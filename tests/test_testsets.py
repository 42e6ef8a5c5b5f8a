"""Test sets by name and from files: a Hub set read offline from a real local HF cache layout (its
data file holding real rows in the set's own field names), the one-line messages when a set is not
cached, not reachable, not saved or not of its published size, instruction and input stored apart,
and prompt ids that put the input under the alpaca template's "### Input:" as the scorer does.

huggingface_hub reads HF_HUB_CACHE, HF_HUB_OFFLINE and HF_ENDPOINT once, at import: the `hub`
fixture sets the environment and the values it already read, so nothing here reaches the Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from catalog import Catalog, db
from catalog.errors import UserError
from catalog.testsets import prompt_id, read_testset, store_testset
from tests.conftest import SHARED_DATA, write_jsonl

COMMIT = "13c4dae" + "0" * 33  # a snapshot's commit, as the HF cache names its folder
CLOSED_PORT = "http://127.0.0.1:9"
DOLLY = SHARED_DATA / "dolly_3k_alpagasus.jsonl"
VICUNA = SHARED_DATA / "test" / "vicuna_80.jsonl"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty HF home whose cache (HF_HOME/hub) this process's huggingface_hub uses, offline."""
    import huggingface_hub.constants as constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def cache_dataset_file(hf_home: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """`data` as `filename` of the Hub dataset `repo_id`, laid out as the HF cache does: a content-addressed
    blob, a snapshot of links to blobs, refs/main naming the snapshot."""
    repo = hf_home / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    link = repo / "snapshots" / COMMIT / filename
    for folder in (blob.parent, link.parent, repo / "refs"):
        folder.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / "main").write_text(COMMIT)
    return link


def as_self_instruct(record: dict, number: int) -> dict:
    """A real Alpaca row in the fields of Self-instruct's user-oriented evaluation set."""
    return {
        "id": f"user_oriented_task_{number}",
        "motivation_app": "Dolly",
        "instruction": record["instruction"],
        "instances": [{"input": record["input"], "output": record["output"]}],
    }


def real_rows(path: Path, count: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:count]]


def test_a_hub_set_is_read_offline_from_the_hf_cache_with_inputs_and_references(hub, tmp_path):
    """252 real Dolly rows as Self-instruct's human-eval.jsonl: the published count passes, the one
    repeated (instruction, input) is kept once, and each prompt keeps its input apart."""
    rows = real_rows(DOLLY, 252)
    lines = "\n".join(json.dumps(as_self_instruct(r, i), ensure_ascii=False) for i, r in enumerate(rows))
    cache_dataset_file(hub, "HuggingFaceH4/self-instruct-eval", "human-eval.jsonl", lines.encode())
    prompts = read_testset("self-instruct")
    assert len(prompts) == len({(r["instruction"], r["input"]) for r in rows}) == 251
    with_input = next(p for p in prompts if p.input)
    row = rows[with_input.position]
    assert (with_input.instruction, with_input.input, with_input.reference) == (
        row["instruction"],
        row["input"],
        row["output"],
    )
    assert with_input.prompt == f"{row['instruction']}\n\n{row['input']}"
    assert with_input.sample.input == row["input"]  # its sample is the ingested row's
    assert with_input.source == f"hf:HuggingFaceH4/self-instruct-eval@{COMMIT}/human-eval.jsonl"
    catalog = Catalog(tmp_path / "catalog")
    assert store_testset(catalog, prompts) == 251 and store_testset(catalog, prompts) == 0
    with catalog.read() as conn:
        stored = db.execute(
            conn, "SELECT prompt, input FROM test_prompt WHERE prompt_id = $id", {"id": with_input.prompt_id}
        )
    assert stored == [(row["instruction"], row["input"])]


def test_a_named_set_of_another_size_is_refused_naming_both_counts(hub):
    """The Vicuna questions as AlpacaEval's JSON array: read, then refused (80 is not AlpacaEval's 805)."""
    rows = [{"instruction": r["instruction"], "dataset": "vicuna"} for r in real_rows(VICUNA, 80)]
    cache_dataset_file(hub, "tatsu-lab/alpaca_eval", "alpaca_eval.json", json.dumps(rows).encode())
    with pytest.raises(UserError) as raised:
        read_testset("alpaca-eval")
    assert str(raised.value) == (
        f"test set 'alpaca-eval' (hf:tatsu-lab/alpaca_eval@{COMMIT}/alpaca_eval.json) has 80 prompts, not the 805 it "
        "was published with: it is another set; pass its path to evaluate it under a name of its own"
    )


def test_offline_a_set_not_in_the_cache_is_one_line_naming_the_hub_dataset(hub):
    with pytest.raises(UserError) as raised:
        read_testset("lima")
    assert str(raised.value) == (
        f"test set 'lima': test.jsonl of the Hub dataset GAIR/lima is not in the local Hugging Face cache "
        f"({hub / 'hub'}); download it there (hf download --repo-type dataset GAIR/lima test.jsonl) "
        "or unset HF_HUB_OFFLINE to let `evaluate` download it"
    )


@pytest.mark.slow  # huggingface_hub retries a refused connection with backoff: about 24 s
def test_online_an_unreachable_hub_is_one_line_naming_it(hub, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_PORT)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", CLOSED_PORT + "/{repo_id}/resolve/{revision}/{filename}"
    )
    with pytest.raises(UserError) as raised:
        read_testset("self-instruct")
    message = str(raised.value)
    assert message.startswith(
        f"test set 'self-instruct': could not download human-eval.jsonl of the Hub dataset "
        f"HuggingFaceH4/self-instruct-eval from {CLOSED_PORT}"
    )
    assert message.endswith("accept its terms on the Hub and run `hf auth login`") and "\n" not in message


def test_a_set_published_only_on_github_says_where_to_save_it(tmp_path, monkeypatch):
    monkeypatch.setattr("catalog.testsets.SHARED_DATA", tmp_path)
    with pytest.raises(UserError) as raised:
        read_testset("koala")
    assert str(raised.value) == (
        f"test set 'koala' is not on the Hugging Face Hub and not at {tmp_path / 'test' / 'koala_test_set.jsonl'}: "
        "save its authors' file there (https://github.com/arnav-gudibande/koala-test-set/raw/main/koala_test_set.jsonl)"
        ", or pass a file's path"
    )


def test_a_files_prompts_keep_instruction_and_input_apart(tmp_path):
    """Real rows with and without an input; the Vicuna set's 80 questions have none."""
    rows = [r for r in real_rows(DOLLY, 40) if r["input"]][:2] + real_rows(DOLLY, 1)
    prompts = read_testset(str(write_jsonl(tmp_path / "held.jsonl", rows)))
    assert [(p.instruction, p.input, p.reference) for p in prompts] == [
        (r["instruction"], r["input"], r["output"]) for r in rows
    ]
    assert prompts[0].prompt_id == prompt_id("held", rows[0]["instruction"], rows[0]["input"])
    assert prompts[0].prompt_id != prompt_id("held", prompts[0].prompt)  # the joined text is another prompt
    vicuna = read_testset("vicuna")
    assert len(vicuna) == 80 and all(p.input == "" and p.prompt == p.instruction for p in vicuna)


@pytest.mark.slow  # loads SmolLM2's tokenizer
def test_a_prompts_input_renders_under_alpacas_input_heading_as_the_scorer_does(tmp_path):
    from catalog.records import to_sample
    from scoring.generate import prompt_ids
    from scoring.models import load_tokenizer, resolve_model
    from scoring.sequences import SequenceBuilder

    row = next(r for r in real_rows(DOLLY, 40) if r["input"])
    path = write_jsonl(tmp_path / "one.jsonl", [{"instruction": row["instruction"], "input": row["input"]}])
    (prompt,) = read_testset(str(path))
    assert prompt.sample is None  # no reference: the fields come from the prompt itself
    tokenizer = load_tokenizer(resolve_model("smollm2-135m"))
    builder = SequenceBuilder(tokenizer, "alpaca", 8192)
    sample = to_sample(row, "alpaca")
    scored = builder.zero_shot(sample.messages, (sample.instruction, sample.input))
    ids = prompt_ids(builder, prompt)
    assert ids == scored.ids[: -scored.n_response]
    assert f"### Instruction:\n{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:" in (
        tokenizer.decode(ids)
    )
