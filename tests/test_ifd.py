"""IFD's response-alone pass: equal to its definition on real rows, computed only when asked, never
redone when neighbours change, restricted to a screened pool, and `too_long` when it cannot fit.

The reference is written here from the definition, with the real SmolLM2 and plain HF forwards:
L(y|x) = mean NLL of tokenizer(y) after the template's prompt, L(y) = mean NLL of the same ids
after one start token (BOS, else EOS), IFD = L(y|x) / L(y), ifd_ppl = exp(L(y|x) - L(y))."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import miwv
from catalog import Catalog, db
from catalog.records import to_sample
from catalog.score import RunPool
from scoring.score import score_catalog
from scoring.sequences import Sequence, SequenceBuilder, Unscorable
from tests.conftest import fixture_records

pytestmark = pytest.mark.slow  # the real SmolLM2 (and MiniLM where MIWV is scored too)

MODEL = "smollm2-135m"
# Stanford Alpaca's PROMPT_DICT (train.py), as Cherry LLM's cherry_seletion/ uses it.
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def rows() -> list[dict]:
    """Six short real rows (Code Alpaca with an input, Dolly without): short keeps the slow tier quick."""
    records = fixture_records()
    return [records[i] for i in (0, 3, 24, 62, 88, 90)]


def ingested(path, records: list[dict]) -> Catalog:
    miwv.open(path).ingest(records, dataset="mix")
    return Catalog(path)


def query(catalog: Catalog, sql: str, params: dict | None = None) -> list[dict]:
    with catalog.read() as conn:
        return db.records(conn, sql, params)


def score(catalog: Catalog, **options):
    return score_catalog(catalog, MODEL, device="cpu", **options)


@torch.inference_mode()
def mean_nll(model, context: list[int], response: list[int]) -> float:
    """Plain HF forward over context + response; cross-entropy at the response positions, mean."""
    ids = torch.tensor([context + response])
    logits = model(input_ids=ids).logits[0, len(context) - 1 : -1].float()
    return F.cross_entropy(logits, torch.tensor(response)).item()


def reference_prompt(tokenizer, template: str, instruction: str, input: str) -> list[int]:
    if template == "alpaca":
        text = (ALPACA_INPUT if input else ALPACA_NO_INPUT).format(instruction=instruction, input=input)
        return tokenizer(text).input_ids
    user = f"{instruction}\n\n{input}" if input else instruction
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_response_loss_and_ifd_equal_their_definition(tmp_path, smollm2, template):
    _, tokenizer, model = smollm2
    records = rows()
    catalog = ingested(tmp_path / "catalog", records)
    result = score(catalog, template=template, metrics=("ifd",))  # no embed: IFD needs no neighbours
    assert (result.zero_shot_passes, result.one_shot_passes, result.response_passes) == (6, 0, 6)
    stored = query(
        catalog,
        """SELECT s.instruction, s.input, s.output, i.* FROM ifd_scores i JOIN samples s USING (sample_id)
           WHERE i.scorer_id = $scorer_id""",
        {"scorer_id": result.scorer_id},
    )
    assert len(stored) == len(records) and {r["input"] != "" for r in stored} == {True, False}
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for row in stored:
        response = tokenizer(row["output"], add_special_tokens=False).input_ids
        zero = mean_nll(model, reference_prompt(tokenizer, template, row["instruction"], row["input"]), response)
        alone = mean_nll(model, [start], response)
        assert row["status"] == "ok" and row["n_response_tokens"] == len(response)
        assert abs(row["zero_shot_loss"] - zero) < 1e-5
        assert abs(row["response_loss"] - alone) < 1e-5
        assert abs(row["ifd"] - zero / alone) < 1e-5
        assert abs(row["ifd_ppl"] - math.exp(zero - alone)) < 1e-5 * math.exp(zero - alone)
    assert query(catalog, "SELECT count(*) AS n FROM response_loss")[0]["n"] == len(records)


def test_the_response_alone_sequence_is_a_start_token_then_the_scored_ids(smollm2):
    _, tokenizer, _ = smollm2
    messages = to_sample(rows()[1], "alpaca").messages
    builder = SequenceBuilder(tokenizer, "alpaca", 4096)
    zero, alone = builder.zero_shot(messages), builder.response_alone(messages)
    assert alone.ids == [tokenizer.bos_token_id] + zero.ids[-zero.n_response :]
    assert alone.n_response == zero.n_response
    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None  # GPT-2 style: the EOS token starts the text
    assert SequenceBuilder(no_bos, "alpaca", 4096).response_alone(messages).ids[0] == tokenizer.eos_token_id
    fits = SequenceBuilder(tokenizer, "alpaca", alone.n_response + 1).response_alone(messages)
    assert isinstance(fits, Sequence) and fits.ids == alone.ids
    assert SequenceBuilder(tokenizer, "alpaca", alone.n_response).response_alone(messages) == Unscorable("too_long")


def test_by_default_no_response_pass_runs(tmp_path):
    catalog = ingested(tmp_path / "catalog", rows())
    miwv.open(tmp_path / "catalog").embed()
    result = score(catalog, template="alpaca")
    assert result.response_passes == 0 and result.zero_shot_passes == 6 and result.one_shot_passes == 6
    assert query(catalog, "SELECT count(*) AS n FROM response_loss")[0]["n"] == 0
    assert query(catalog, "SELECT metrics FROM score_run")[0]["metrics"] == "miwv"


def test_response_passes_are_never_redone_when_neighbours_change(tmp_path):
    path = tmp_path / "catalog"
    first = rows()
    catalog = ingested(path, first)
    miwv.open(path).embed()
    before = score(catalog, template="alpaca", metrics=("miwv", "ifd"))
    assert (before.zero_shot_passes, before.one_shot_passes, before.response_passes) == (6, 6, 6)
    links = {r["sample_id"]: r["neighbour_id"] for r in query(catalog, "SELECT * FROM neighbours")}
    # Same instruction, another response: a new sample whose user text is the old one's, so it
    # becomes that sample's nearest neighbour.
    more = [dict(r, output=r["output"] + "\n\nI hope this helps.") for r in first[:3]]
    miwv.open(path).ingest(more, dataset="mix")
    miwv.open(path).embed()
    now = {r["sample_id"]: r["neighbour_id"] for r in query(catalog, "SELECT * FROM neighbours")}
    moved = [s for s, n in links.items() if now[s] != n]
    assert moved
    after = score(catalog, template="alpaca", metrics=("miwv", "ifd"))
    new_ids = {r["sample_id"] for r in query(catalog, "SELECT sample_id FROM samples")} - set(links)
    assert after.response_passes == len(new_ids) == 3
    assert after.one_shot_passes >= len(moved) + 3  # the moved links' one-shot passes, and the new samples'
    redone = query(catalog, "SELECT sample_id FROM response_loss WHERE run_id = $run", {"run": after.run_id})
    assert {r["sample_id"] for r in redone} == new_ids
    kept = query(catalog, "SELECT count(*) AS n FROM response_loss WHERE run_id = $run", {"run": before.run_id})
    assert kept[0]["n"] == 6
    run = query(catalog, "SELECT passes FROM score_run WHERE run_id = $run", {"run": after.run_id})[0]
    assert run["passes"] == after.passes


def test_a_run_pool_restricts_the_scored_samples_and_records_its_calibration_sample(tmp_path):
    catalog = ingested(tmp_path / "catalog", rows())
    ids = np.sort(np.array([r["sample_id"] for r in query(catalog, "SELECT sample_id FROM samples")], np.int64))
    chosen = np.sort(np.append(ids[:3], 12345))  # an id that is no current sample is no part of the pool
    pool = RunPool(chosen, 7, "dataset = 'mix'", 50.0, 11, ids[1:2])
    result = score(catalog, template="alpaca", metrics=("ifd",), pool=pool)
    assert (result.pool, result.samples, result.response_passes) == (3, 3, 3)
    for table in ("zero_shot_loss", "response_loss"):
        assert sorted(r["sample_id"] for r in query(catalog, f"SELECT sample_id FROM {table}")) == list(ids[:3])
    run = query(catalog, "SELECT * FROM score_run WHERE run_id = $run", {"run": result.run_id})[0]
    assert (run["metrics"], run["pool_selection_id"], run["pool_where"]) == ("ifd", 7, "dataset = 'mix'")
    assert (run["calibrate_percent"], run["calibrate_seed"], run["pool"]) == (50.0, 11, 3)
    again = score(catalog, template="alpaca", metrics=("ifd",), pool=pool)  # nothing to compute, still recorded
    assert again.samples == 0 and again.run_id == result.run_id + 1
    calibration = query(catalog, "SELECT run_id, sample_id FROM score_calibration ORDER BY run_id")
    assert [(r["run_id"], r["sample_id"]) for r in calibration] == [(result.run_id, ids[1]), (again.run_id, ids[1])]


def test_a_response_too_long_to_score_alone_is_too_long(tmp_path, smollm2):
    _, tokenizer, _ = smollm2
    records = [
        {"instruction": "Count to two hundred.", "input": "", "output": " ".join(map(str, range(1, 201)))},
        {"instruction": "Say yes.", "input": "", "output": "Yes."},
    ]
    catalog = ingested(tmp_path / "catalog", records)
    short = len(tokenizer("Yes.", add_special_tokens=False).input_ids)
    result = score(catalog, template="alpaca", max_length=64, metrics=("ifd",))
    assert result.unscorable == 2  # the long one twice; the short one fits (prompt about 40 tokens)
    stored = {
        r["output"][:3]: r
        for r in query(
            catalog,
            """SELECT s.output, r.status, r.loss, r.n_response_tokens, i.status AS ifd_status, i.ifd
               FROM response_loss r JOIN samples s USING (sample_id) JOIN ifd_scores i USING (sample_id)""",
        )
    }
    assert (stored["1 2"]["status"], stored["1 2"]["loss"], stored["1 2"]["ifd_status"]) == (
        "too_long",
        None,
        "too_long",
    )
    assert stored["1 2"]["ifd"] is None
    assert (stored["Yes"]["status"], stored["Yes"]["n_response_tokens"], stored["Yes"]["ifd_status"]) == (
        "ok",
        short,
        "ok",
    )


def test_ray_workers_compute_the_response_passes(tmp_path, smollm2):
    _, tokenizer, model = smollm2
    catalog = ingested(tmp_path / "catalog", rows())
    result = score(catalog, template="alpaca", metrics=("ifd",), workers=2)
    assert (result.workers, result.zero_shot_passes, result.response_passes) == (2, 6, 6)
    stored = query(catalog, "SELECT s.output, r.loss FROM response_loss r JOIN samples s USING (sample_id)")
    assert len(stored) == 6
    for row in stored:
        response = tokenizer(row["output"], add_special_tokens=False).input_ids
        assert abs(row["loss"] - mean_nll(model, [tokenizer.bos_token_id], response)) < 1e-5
