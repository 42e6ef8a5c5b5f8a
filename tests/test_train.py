"""`train` (issue 19): fine-tuning on a recorded selection trains on exactly the ids the scorer
scored, records the run and its loss curve, resumes after kill -9, and refuses what it cannot train
on before writing anything. Real catalog, the bundled SmolLM2, a few steps on 8 real samples."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import miwv
from catalog.runs import selection_members
from catalog.store import Catalog
from scoring.local_files import fingerprint
from scoring.sequences import SequenceBuilder
from scoring.train import build_examples, trained_suffix
from tests.conftest import CliRun, fixture_records, kill_9_once, write_jsonl

# A few quick steps: one sequence per step, a high rate so a few steps move the adapter.
QUICK = dict(batch_size=1, gradient_accumulation=1, lr=1e-3, max_length=256, save_steps=2)
QUICK_FLAGS = [f"--{key.replace('_', '-')}={value}" for key, value in QUICK.items()]
TRAIN = ("train", "--selection", "1", "--model", "smollm2-135m", "--template", "alpaca", "--seed", "0", *QUICK_FLAGS)


def select_eight(cli_run: CliRun) -> None:
    """24 real rows, and selection 1: 8 of them at random (no scores needed)."""
    rows = write_jsonl(cli_run.catalog.parent / "few.jsonl", fixture_records()[:24])
    assert cli_run("ingest", rows, "--dataset", "few").exit_code == 0
    assert cli_run("select", "--strategy", "random", "--top-k", "8", "--seed", "3").exit_code == 0


@pytest.fixture
def selected(catalog_built_by, cli_run) -> CliRun:
    catalog_built_by(select_eight)
    return cli_run


def files_of(folder: Path) -> dict[str, str]:
    """Every file under `folder`, byte for byte."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize("template", ["alpaca", "alpaca-lf", "chat"])
def test_the_training_ids_are_the_scorers_ids_and_only_the_response_carries_loss(selected, smollm2, template):
    _, tokenizer, _ = smollm2
    members = selection_members(Catalog(selected.catalog), 1)
    ranked = miwv.open(selected.catalog).sql(
        "SELECT sample_id FROM selection_member WHERE selection_id = 1 ORDER BY rank"
    )
    assert [m.sample_id for m in members] == ranked["sample_id"].to_pylist() and len(members) == 8
    eos = [tokenizer.eos_token_id]
    suffix = {  # what each imitated trainer trains after the response
        "alpaca": eos,  # Stanford Alpaca: the response, then EOS
        "alpaca-lf": eos + tokenizer.encode("\n\n", add_special_tokens=False),  # LLaMA-Factory's format_assistant
        "chat": tokenizer.encode("<|im_end|>\n", add_special_tokens=False),  # SmolLM2's ChatML after a message
    }[template]
    builder = SequenceBuilder(tokenizer, template, 4096)
    assert trained_suffix(tokenizer, builder.template) == suffix
    examples, too_long = build_examples(SequenceBuilder(tokenizer, template, 4096), members, suffix)
    assert too_long == 0 and [e.sample_id for e in examples] == [m.sample_id for m in members]
    for example, member in zip(examples, members, strict=True):
        scored = builder.zero_shot(member.messages, member.fields)  # the scorer's own zero-shot sequence
        assert example.input_ids == scored.ids + suffix
        n_prompt = len(scored.ids) - scored.n_response
        assert example.labels == [-100] * n_prompt + scored.ids[n_prompt:] + suffix


@pytest.mark.slow
def test_lora_training_records_the_run_and_the_adapter_moves_the_loss(selected, smollm2):
    import torch
    from peft import PeftModel

    from scoring.models import load_model

    spec, tokenizer, model = smollm2
    cat = miwv.open(selected.catalog)
    trained = cat.train(1, "smollm2-135m", template="alpaca", max_steps=3, **QUICK)
    assert (trained.run_id, trained.method, trained.steps, trained.samples) == (1, "lora", 3, 8)
    assert not trained.resumed and not trained.already_finished
    assert trained.output_path == selected.catalog / "runs" / "1" / "final"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in trained.output_path.iterdir()}
    run = cat.sql("SELECT * FROM train_run").to_pylist()
    assert len(run) == 1 and run[0]["finished_at"] is not None and run[0]["output_path"] == "runs/1"
    assert run[0]["output_fingerprint"] == fingerprint(trained.output_path)
    assert run[0]["base_fingerprint"] == spec.fingerprint and run[0]["template"] == "alpaca"
    losses = cat.sql("SELECT step, loss FROM train_loss WHERE run_id = 1 ORDER BY step").to_pylist()
    assert [row["step"] for row in losses] == [1, 2, 3] and losses[-1]["loss"] == pytest.approx(trained.final_loss)

    member = selection_members(Catalog(selected.catalog), 1)[0]
    example = build_examples(SequenceBuilder(tokenizer, "alpaca", 256), [member], [tokenizer.eos_token_id])[0][0]
    ids, labels = torch.tensor([example.input_ids]), torch.tensor([example.labels])
    with torch.no_grad():
        base_loss = model(ids, labels=labels).loss.item()
        adapted = PeftModel.from_pretrained(load_model(spec, "cpu", torch.float32), trained.output_path).eval()
        adapted_loss = adapted(ids, labels=labels).loss.item()
    assert abs(adapted_loss - base_loss) > 1e-3, (base_loss, adapted_loss)

    again = cat.train(1, "smollm2-135m", template="alpaca", max_steps=3, **QUICK)
    assert again.already_finished and again.run_id == 1 and again.steps == 3
    assert cat.sql("SELECT count(*) AS n FROM train_run")["n"].to_pylist() == [1]


@pytest.mark.slow
def test_train_resumes_from_its_last_checkpoint_after_kill_9(selected):
    checkpoints = selected.catalog / "runs" / "1"
    kill_9_once(
        selected.catalog,
        [*TRAIN, "--max-steps", "6"],
        lambda: any(checkpoints.glob("checkpoint-*/trainer_state.json")),
        "its first checkpoint",
    )
    resumed = selected.json(*TRAIN, "--max-steps", "6")
    assert resumed["resumed"] and resumed["run_id"] == 1 and resumed["steps"] == 6
    cat = miwv.open(selected.catalog)
    steps = cat.sql("SELECT step FROM train_loss WHERE run_id = 1 ORDER BY step")["step"].to_pylist()
    assert steps == [1, 2, 3, 4, 5, 6]
    assert cat.sql("SELECT finished_at IS NOT NULL AS done FROM train_run")["done"].to_pylist() == [True]


@pytest.mark.slow
def test_full_fine_tuning_writes_a_model_folder(selected):
    trained = miwv.open(selected.catalog).train(1, "smollm2-135m", template="alpaca", full=True, max_steps=1, **QUICK)
    assert trained.method == "full" and trained.steps == 1
    assert {"config.json", "model.safetensors"} <= {p.name for p in trained.output_path.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--selection", "9", "--model", "smollm2-135m"), "no selection 9; selections: 1 (random, 8 current members)"),
        (("--selection", "1", "--model", "no-such-model"), "model 'no-such-model' is neither an alias"),
        (("--selection", "1", "--model", "smollm2-135m", "--removed"), "selection 1 has no current member"),
    ],
    ids=["unknown-selection", "unknown-model", "no-current-member"],
)
def test_what_cannot_be_trained_is_refused_in_one_line_before_anything_is_written(selected, args, message):
    if "--removed" in args:
        assert selected("remove", "--all").exit_code == 0
        args = args[:-1]
    before = files_of(selected.catalog)
    result = selected("train", *args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert files_of(selected.catalog) == before and not (selected.catalog / "runs").exists()
