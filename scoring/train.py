"""Fine-tune a base model on a recorded selection, on exactly the ids the scorer scored.

Each example is built in token space by the scorer's own SequenceBuilder: input ids = the
zero-shot sequence (the scoring prompt, id for id, then the response ids) followed by what the
imitated trainer trains after a response; labels = -100 on the prompt, the ids themselves on the
response and that suffix. The suffix, per template:

- "alpaca": EOS (Stanford Alpaca's train.py appends tokenizer.eos_token to every target);
- "alpaca-lf": EOS then "\\n\\n" (LLaMA-Factory's `alpaca` template, its format_assistant: both
  trained);
- a chat template ("chat" or a .jinja file): what the template renders after an assistant
  message (SmolLM2's ChatML: "<|im_end|>\\n"), as TRL trains a conversation's completion; EOS
  when the template does not render a message's content verbatim.

Samples longer than max_length with their suffix are left out (counted), never truncated, as the
scorer leaves them unscored. Earlier turns of a multi-turn sample are prompt, not trained.

Training is TRL's SFTTrainer on that pre-tokenised dataset (input_ids + labels, which TRL takes
as they are), with peft LoRA by default or every weight (`method="full"`). The defaults follow
Stanford Alpaca's recipe, which the MIWV paper's Alpaca experiments train with: 3 epochs,
learning rate 2e-5, effective batch 128 (per-device batch x gradient accumulation), cosine
schedule with 3% warmup, no weight decay, max length 512 in Stanford's script (2048 in Cherry
LLM's); here max length defaults to the scorer's (the model's context, at most 4096), so every
scored sample fits. LoRA: r 8, alpha 16, dropout 0.05 (alpaca-lora's), on every linear layer.
Weights are float32 on CPU; on CUDA bfloat16 mixed precision (LoRA: bfloat16 base weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from transformers import TrainerCallback

from catalog import runs
from catalog.errors import UserError
from catalog.runs import Member, RunKey, RunRow
from catalog.store import Catalog
from scoring.commits import patiently
from scoring.local_files import fingerprint
from scoring.models import choose_template, default_max_length, load_model, load_tokenizer, resolve_model
from scoring.sequences import SequenceBuilder, Unscorable
from scoring.templates import Template

FINAL = "final"  # runs/<id>/final: the adapter or the model
PROBE_RESPONSE = "Blue."  # an assistant message whose rendering shows what a chat template puts after it


@dataclass(frozen=True)
class Settings:
    """The hyperparameters of a run (see the module docstring for the defaults' source)."""

    method: str = "lora"  # lora | full
    epochs: float = 3.0
    learning_rate: float = 2e-5
    batch_size: int = 4  # per device
    gradient_accumulation: int = 32  # effective batch = batch_size x gradient_accumulation = 128
    max_length: int | None = None  # None: the scorer's default
    max_steps: int | None = None  # stop after this many optimizer steps (None: the epochs decide)
    warmup_ratio: float = 0.03
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"  # or module names, comma-separated ("q_proj,v_proj")

    def recorded(self, max_length: int, sample_ids: list[int]) -> str:
        """The JSON stored in train_run.hyperparameters (LoRA's only for LoRA), with the hash of the
        sample ids trained on: a selection whose current members changed is another run."""
        values = asdict(self) | {"max_length": max_length}
        if self.method != "lora":
            values = {k: v for k, v in values.items() if not k.startswith("lora_")}
        values["sample_ids_sha256"] = hashlib.sha256(",".join(map(str, sample_ids)).encode()).hexdigest()
        return json.dumps(values, sort_keys=True)


@dataclass(frozen=True)
class Example:
    """One training example: its ids, and labels (-100 where no loss is taken)."""

    sample_id: int
    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class TrainResult:
    run_id: int
    selection_id: int
    model: str
    template: str
    method: str
    device: str
    samples: int  # examples trained on
    too_long: int  # members left out: longer than max_length
    steps: int
    final_loss: float | None
    output_path: Path  # runs/<id>/final
    seconds: float
    resumed: bool  # continued an unfinished identical run from its last checkpoint
    already_finished: bool  # an identical run had finished: reported, not redone


def trained_suffix(tokenizer, template: Template) -> list[int]:
    """The ids the imitated trainer trains after a response (see the module docstring)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if template.kind == "alpaca":
        return eos
    if template.kind == "alpaca-lf":
        return eos + tokenizer("\n\n", add_special_tokens=False).input_ids
    chat = [{"role": "user", "content": "Name a primary colour."}]
    prompt = tokenizer.apply_chat_template(
        chat, chat_template=template.text, add_generation_prompt=True, tokenize=False
    )
    whole = tokenizer.apply_chat_template(
        chat + [{"role": "assistant", "content": PROBE_RESPONSE}], chat_template=template.text, tokenize=False
    )
    if not whole.startswith(prompt + PROBE_RESPONSE) or len(whole) == len(prompt + PROBE_RESPONSE):
        return eos
    return tokenizer(whole[len(prompt + PROBE_RESPONSE) :], add_special_tokens=False).input_ids


def build_examples(builder: SequenceBuilder, members: list[Member], suffix: list[int]) -> tuple[list[Example], int]:
    """(the examples of `members` in rank order, how many were too long to train on)."""
    examples, too_long = [], 0
    for member in members:
        sequence = builder.zero_shot(member.messages, member.fields)
        if isinstance(sequence, Unscorable) or len(sequence.ids) + len(suffix) > builder.max_length:
            too_long += 1
            continue
        n_prompt = len(sequence.ids) - sequence.n_response
        ids = sequence.ids + suffix
        examples.append(Example(member.sample_id, ids, [-100] * n_prompt + ids[n_prompt:]))
    return examples, too_long


def train_selection(
    catalog: Catalog,
    selection_id: int,
    model: str,
    template: str | None = None,
    settings: Settings = Settings(),
    seed: int = 0,
    save_steps: int = 10,
) -> TrainResult:
    """Fine-tune `model` on selection `selection_id`'s current members, or resume or report the
    identical run; the adapter or model lands in <catalog>/runs/<run_id>/final, fingerprinted.

    Every user error (unknown selection, one with no current member, unknown model or template,
    nothing that fits max_length) comes before anything is written."""
    started = time.monotonic()
    members = runs.selection_members(catalog, selection_id)
    spec = resolve_model(model)
    tokenizer = load_tokenizer(spec)
    chosen = choose_template(tokenizer, template)
    max_length = settings.max_length or default_max_length(spec)
    examples, too_long = build_examples(
        SequenceBuilder(tokenizer, chosen, max_length), members, trained_suffix(tokenizer, chosen)
    )
    if not examples:
        raise UserError(
            f"none of selection {selection_id}'s {len(members)} samples fits max length {max_length} with "
            f"the {chosen.name} template; raise --max-length"
        )
    key = RunKey(
        selection_id,
        spec.fingerprint,
        chosen.name,
        chosen.key.digest,
        settings.method,
        settings.recorded(max_length, [e.sample_id for e in examples]),
        seed,
    )
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = partial(TrainResult, selection_id=selection_id, model=model, template=chosen.name)
    report = partial(report, method=settings.method, device=device, samples=len(examples), too_long=too_long)
    with catalog.job("train"):
        run = patiently(partial(runs.find_run, catalog, key))
        if run is not None and run.finished:
            steps, loss = runs.last_loss(catalog, run.run_id)
            return report(
                run_id=run.run_id,
                steps=steps,
                final_loss=loss,
                output_path=catalog.path / run.output_path / FINAL,
                seconds=time.monotonic() - started,
                resumed=False,
                already_finished=True,
            )
        resumed = run is not None
        if run is None:
            run = patiently(partial(runs.start_run, catalog, key, model, device, len(examples)))
        folder = catalog.path / run.output_path
        checkpoint = last_checkpoint(folder)
        if resumed:
            patiently(partial(runs.forget_losses_after, catalog, run.run_id, checkpoint_step(checkpoint)))
        steps = _fit(catalog, run, spec, tokenizer, examples, settings, seed, save_steps, device, checkpoint)
        final = folder / FINAL
        patiently(partial(runs.finish_run, catalog, run.run_id, fingerprint(final)))
        for stale in folder.glob("checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
    return report(
        run_id=run.run_id,
        steps=steps,
        final_loss=runs.last_loss(catalog, run.run_id)[1],
        output_path=final,
        seconds=time.monotonic() - started,
        resumed=resumed,
        already_finished=False,
    )


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint-N folder (one killed while being written lacks trainer_state.json)."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    complete = [p for p in found if (p / "trainer_state.json").is_file()]
    return max(complete, key=checkpoint_step, default=None)


def checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else 0


def _fit(
    catalog: Catalog,
    run: RunRow,
    spec,
    tokenizer,
    examples: list[Example],
    settings: Settings,
    seed: int,
    save_steps: int,
    device: str,
    checkpoint: Path | None,
) -> int:
    """Train (from `checkpoint` when given) and save runs/<id>/final; returns the optimizer steps done."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(seed)
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda and settings.method == "lora" else torch.float32
    model = load_model(spec, device, dtype)
    folder = catalog.path / run.output_path
    config = SFTConfig(
        output_dir=str(folder),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=cuda,  # TRL's default saves GPU memory; on CPU it only costs time
        max_length=None,  # examples are built to fit, never truncated
        packing=False,
        dataloader_num_workers=0,
    )
    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora(settings) if settings.method == "lora" else None,
        callbacks=[_LossRecorder(catalog, run.run_id)],
    )
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines; stdout holds the summary
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
        trainer.save_model(str(folder / FINAL))
    return trainer.state.global_step


def _lora(settings: Settings):
    from peft import LoraConfig

    targets = settings.lora_targets
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )


class _LossRecorder(TrainerCallback):
    """Writes each logging step's loss as a train_loss row (one transaction per log)."""

    def __init__(self, catalog: Catalog, run_id: int) -> None:
        self.catalog, self.run_id = catalog, run_id

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if state.is_world_process_zero and logs and "loss" in logs:
            row = (state.global_step, logs.get("epoch"), float(logs["loss"]), logs.get("learning_rate"))
            patiently(partial(runs.record_loss, self.catalog, self.run_id, *row))
