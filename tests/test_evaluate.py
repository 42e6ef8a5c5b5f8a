"""`evaluate` and `experiments` on real LoRA runs of the bundled SmolLM2: test prompts stored once,
generations and judgements never redone, left padding that changes no answer, reference losses
equal to the scorer's zero-shot losses, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import miwv
from catalog.db import execute, insert_arrow, utcnow
from catalog.testsets import read_testset
from scoring.judge import parse_score, verdict
from tests.conftest import SHARED_DATA, CliRun, kill_9_once, write_jsonl

pytestmark = pytest.mark.slow  # loads SmolLM2 and its adapters

VICUNA = SHARED_DATA / "test" / "vicuna_80.jsonl"
DOLLY = SHARED_DATA / "dolly_3k_alpagasus.jsonl"
TOKENS = 8


def dolly(rows: slice) -> list[dict]:
    lines = DOLLY.read_text(encoding="utf-8").splitlines()[rows]
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in map(json.loads, lines)]


def make_adapter(folder: Path, seed: int) -> Path:
    """A LoRA adapter on SmolLM2 whose B weights are seeded random, large enough that two seeds answer differently."""
    import torch
    from peft import LoraConfig, get_peft_model

    from scoring.models import load_model, resolve_model

    model = get_peft_model(
        load_model(resolve_model("smollm2-135m"), "cpu", torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    return folder


def record_run(cat: miwv.Catalog, run_id: int, selection_id: int, adapter: Path, seed: int, loss: float) -> None:
    import pyarrow as pa

    now = utcnow()
    row = dict(
        run_id=run_id, selection_id=selection_id, model="smollm2-135m", base_fingerprint="test", template="alpaca",
        template_hash="test", method="lora", hyperparameters="{}", seed=seed, device="cpu", samples=10,
        output_path=str(adapter), output_fingerprint="test", started_at=now, finished_at=now,
    )  # fmt: skip
    with cat._store.write() as conn:
        insert_arrow(conn, "train_run", pa.Table.from_pylist([row]))
        execute(conn, "INSERT INTO train_loss VALUES ($r, 1, 1.0, $l, 0.0001)", {"r": run_id, "l": loss})


def two_lora_runs(root: Path, pool: int, selected: int) -> miwv.Catalog:
    """A catalog of the first `pool` Dolly samples, a random selection of `selected`, and two LoRA
    runs on it: run 1 (seed 0) and run 2 (seed 1)."""
    cat = miwv.open(root / "catalog")
    cat.ingest(write_jsonl(root / "pool.jsonl", dolly(slice(0, pool))), dataset="pool")
    selection = cat.select(strategy="random", top_k=selected, seed=3)
    for run_id, seed in ((1, 0), (2, 1)):
        record_run(cat, run_id, selection.selection_id, make_adapter(root / f"adapter{seed}", seed), seed, 1 + seed)
    return cat


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[miwv.Catalog, Path]:
    """Two LoRA runs on a random 10 of 30 Dolly samples, and test files."""
    root = tmp_path_factory.mktemp("evaluate")
    cat = two_lora_runs(root, 30, 10)
    write_jsonl(root / "three.jsonl", [{"instruction": r["instruction"]} for r in dolly(slice(100, 103))])
    write_jsonl(root / "held.jsonl", dolly(slice(200, 203)))
    write_jsonl(root / "overlap.jsonl", dolly(slice(0, 30)))  # the pool: the selection's 10 among them
    return cat, root


def table_count(cat: miwv.Catalog, table: str) -> int:
    with cat._store.read() as conn:
        return execute(conn, f"SELECT count(*) FROM {table}")[0][0]


def test_vicuna_is_read_with_its_80_prompts_in_order():
    prompts = read_testset("vicuna")
    assert len(prompts) == 80 and prompts[0].prompt == "How can I improve my time management skills?"
    assert [p.position for p in prompts] == list(range(80)) and all(0 <= p.prompt_id < 2**63 for p in prompts)


def test_generation_is_stored_once_and_judging_asks_both_orders_once(runs):
    cat, root = runs
    first = cat.evaluate([1, 2], testset=str(root / "three.jsonl"), judge="local:smollm2-135m", max_new_tokens=TOKENS)
    assert (first.prompts, first.new_prompts, first.generated, first.asked) == (3, 3, 6, 6)
    assert table_count(cat, "generation") == 6 and table_count(cat, "judgement") == 6
    (pair,) = first.pairs
    assert (pair["run_a"], pair["run_b"], pair["n"]) == (1, 2, 6)
    assert pair["wins"] + pair["ties"] + pair["losses"] == 6
    assert pair["winning_score"] == pytest.approx(1 + (pair["wins"] - pair["losses"]) / 6)
    again = cat.evaluate("1,2", testset=str(root / "three.jsonl"), judge="local:smollm2-135m", max_new_tokens=TOKENS)
    assert (again.new_prompts, again.generated, again.asked) == (0, 0, 0)
    assert table_count(cat, "test_prompt") == 3 and table_count(cat, "judgement") == 6
    answers = cat.sql("SELECT run_id, text FROM generation ORDER BY prompt_id, run_id").to_pylist()
    pairs = list(zip(answers[::2], answers[1::2], strict=True))
    assert any(a["text"] != b["text"] for a, b in pairs), f"both adapters answered alike: {pairs}"
    verdicts = cat.sql("SELECT DISTINCT verdict, judge_prompt_hash FROM judgement").to_pylist()
    assert {v["verdict"] for v in verdicts} <= {"a", "b", "tie"} and len(
        {v["judge_prompt_hash"] for v in verdicts}
    ) == 1
    rows = {row["run_id"]: row for row in cat.experiments()}
    assert set(rows) == {1, 2} and rows[1]["seeds"] == 2
    assert rows[1]["final_loss mean"] == pytest.approx(1.5) and rows[1]["winning_score"]
    score = next(iter(rows[1]["winning_score"].values()))
    assert score == pytest.approx(pair["winning_score"]) and next(iter(rows[2]["winning_score"].values())) == (
        pytest.approx(2 - score)
    )


def test_evaluate_resumes_after_kill_9_generating_only_what_is_missing(runs):
    cat, root = runs
    prompts = write_jsonl(root / "killed.jsonl", [{"instruction": r["instruction"]} for r in dolly(slice(300, 320))])
    args = ["evaluate", "--runs", "1", "--testset", str(prompts), "--max-new-tokens", "4", "--batch-size", "1"]
    answered = "SELECT count(*) AS n FROM generation JOIN test_prompt USING (prompt_id) WHERE testset = 'killed'"
    kill_9_once(cat.path, args, lambda: cat.sql(answered)["n"][0].as_py() > 0, "its first answer was stored")
    kept = cat.sql(answered)["n"][0].as_py()
    assert 0 < kept < 20
    resumed = CliRun(cat.path).json(*args)
    assert (resumed["new_prompts"], resumed["generated"]) == (0, 20 - kept)
    assert cat.sql(answered)["n"][0].as_py() == 20


def test_left_padding_gives_the_greedy_answer_of_one_prompt_alone(runs):
    import torch

    from catalog.evaluations import find_runs
    from scoring.generate import Settings, generate, load_run

    cat, root = runs
    loaded = load_run(find_runs(cat._store, [1])[0], "cpu", torch.float32)
    prompts = read_testset("vicuna")[:4]
    settings = Settings(max_new_tokens=TOKENS)
    together = {p: text for batch in generate(loaded, prompts, settings, batch_rows=4) for p, text, _ in batch}
    alone = {p: text for batch in generate(loaded, prompts, settings, batch_rows=1) for p, text, _ in batch}
    assert together == alone
    sampled = Settings(max_new_tokens=TOKENS, sample=True, seed=5)
    twice = [[row for batch in generate(loaded, prompts[:2], sampled) for row in batch] for _ in range(2)]
    assert twice[0] == twice[1]


def test_reference_loss_is_the_scorers_zero_shot_loss_and_refuses_training_samples(runs, tmp_path):
    cat, root = runs
    result = cat.evaluate(base="smollm2-135m", template="alpaca", reference_loss=root / "held.jsonl")
    (base_run,) = result.runs
    scorer = miwv.open(tmp_path / "scorer")
    scorer.ingest(root / "held.jsonl", dataset="held")
    scorer.score("smollm2-135m", template="alpaca", metrics="ifd")
    with scorer._store.read() as conn:
        expected = execute(conn, "SELECT avg(loss) FROM zero_shot_loss")[0][0]
    assert result.reference_losses[base_run] == pytest.approx(expected, rel=1e-5)
    assert cat.evaluate(base="smollm2-135m", template="alpaca", reference_loss=root / "held.jsonl").runs == (base_run,)
    with pytest.raises(miwv.UserError, match=r"^reference file .* shares \d+ sample\(s\) with selection"):
        cat.evaluate([1], reference_loss=root / "overlap.jsonl")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(runs=[99], testset="vicuna"), r"^no training run 99 in "),
        (dict(runs=[1], testset="nowhere"), r"^test set 'nowhere' is neither a known name \(vicuna, .*\) nor a file"),
        (dict(runs=[1, 2], testset="vicuna", judge="gpt"), r"^judge 'gpt' is not local:MODEL"),
        (dict(runs=[1]), r"^nothing to evaluate"),
    ],
)
def test_mistakes_are_one_line_errors(runs, arguments, message):
    cat, _ = runs
    with pytest.raises(miwv.UserError, match=message) as raised:
        cat.evaluate(**arguments)
    assert "\n" not in str(raised.value)


def test_the_cli_runs_experiments(runs):
    cat, _ = runs
    rows = CliRun(cat.path).json("experiments")
    assert {row["run_id"] for row in rows} >= {1, 2}


def test_cherry_parse_reads_two_scores_and_refuses_anything_else():
    assert (
        parse_score("7 5\nbecause") == (7.0, 5.0)
        and verdict("7 9") == "second"
        and verdict("7, 9") is None
        and verdict("4 4") == "tie"
    )
    assert verdict("Assistant 1 is better") is None
