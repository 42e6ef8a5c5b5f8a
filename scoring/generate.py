"""A training run's model answering test prompts, and its loss on reference answers.

A run's model is its base model with its LoRA adapter (method "lora"), its own folder ("full"),
or the base model alone ("base"). Prompts are rendered with the run's template exactly as the
scorer renders a zero-shot prompt (SequenceBuilder: everything up to where the response starts),
so the model answers in the format it was trained on. Generation is greedy, or sampled with a
seed per prompt (each sampled prompt runs alone, so its text depends on the seed and prompt
only); greedy prompts run in length-sorted batches, padded on the left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from catalog.evaluations import BASE_METHOD, Run
from catalog.score import PassResult, PendingSample
from catalog.testsets import TestPrompt
from scoring.batching import default_batching
from scoring.models import default_max_length, load_model, load_tokenizer, pad_id, resolve_model
from scoring.passes import PassRunner
from scoring.sequences import SequenceBuilder
from scoring.templates import Turn


@dataclass(frozen=True)
class Settings:
    """How answers are generated (stored as JSON with each generation)."""

    max_new_tokens: int
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        """What identifies the settings: sampling parameters only when sampling."""
        if not self.sample:
            return {"max_new_tokens": self.max_new_tokens, "sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


@dataclass
class RunModel:
    """A run's model, tokenizer and sequence builder, ready to generate and score."""

    run: Run
    model: object
    tokenizer: object
    builder: SequenceBuilder

    @property
    def pad_id(self) -> int:
        return pad_id(self.tokenizer)


def load_run(run: Run, device: str, dtype: torch.dtype) -> RunModel:
    """The run's model in eval mode: base + adapter (merged), its full folder, or the base alone."""
    base = resolve_model(run.model)
    spec = resolve_model(run.output_path) if run.method == "full" else base
    tokenizer = load_tokenizer(spec if (spec.path / "tokenizer_config.json").is_file() else base)
    model = load_model(spec, device, dtype)
    if run.method not in ("full", BASE_METHOD):
        model = _with_adapter(model, Path(run.output_path))
    return RunModel(run, model, tokenizer, SequenceBuilder(tokenizer, run.template, default_max_length(spec)))


def _with_adapter(model, folder: Path):
    """The base model with the peft adapter in `folder` merged into its weights (same outputs, faster)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, folder).merge_and_unload().eval()


def prompt_ids(builder: SequenceBuilder, prompt: TestPrompt) -> list[int]:
    """The prompt's ids as the scorer renders the zero-shot prompt of the same Alpaca sample: instruction
    and input as the template's Alpaca fields (the alpaca template's "### Input:" section), the user turn
    as ingest stores it for a chat template; with a reference answer or without one."""
    return builder.prompt_ids([Turn("user", prompt.prompt, (prompt.instruction, prompt.input))])


def generate(
    loaded: RunModel, prompts: list[TestPrompt], settings: Settings, batch_rows: int = 8
) -> Iterator[list[tuple[int, str, int]]]:
    """Yield (prompt_id, text, n_tokens) batch by batch, so each batch can be stored before the next."""
    ids = {p.prompt_id: prompt_ids(loaded.builder, p) for p in prompts}
    order = sorted(ids, key=lambda p: len(ids[p]))
    rows = 1 if settings.sample else batch_rows
    for start in range(0, len(order), rows):
        batch = order[start : start + rows]
        if settings.sample:
            torch.manual_seed(settings.seed * 1_000_003 + batch[0] % 1_000_003)
        yield list(zip(batch, *_answers(loaded, [ids[p] for p in batch], settings), strict=True))


@torch.inference_mode()
def _answers(loaded: RunModel, batch: list[list[int]], settings: Settings) -> tuple[list[str], list[int]]:
    """Texts and token counts (up to EOS) of one left-padded batch."""
    longest = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), longest), loaded.pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, longest - len(ids) :] = torch.tensor(ids)
        mask[row, longest - len(ids) :] = 1
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p) if settings.sample else {}
    output = loaded.model.generate(
        input_ids=input_ids.to(loaded.model.device),
        attention_mask=mask.to(loaded.model.device),
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.sample,
        pad_token_id=loaded.pad_id,
        eos_token_id=loaded.tokenizer.eos_token_id,
        **sampling,
    )
    texts, counts = [], []
    for new in output[:, longest:].tolist():
        eos = loaded.tokenizer.eos_token_id
        kept = new[: new.index(eos)] if eos in new else new
        texts.append(loaded.tokenizer.decode(kept, skip_special_tokens=True))
        counts.append(len(kept))
    return texts, counts


def reference_losses(
    loaded: RunModel, prompts: list[TestPrompt], emit: Callable[[list[tuple[int, float | None, int | None]]], None]
) -> None:
    """Mean response NLL of each prompt's reference under the run: the scorer's zero-shot pass
    (PassRunner), so it is the loss `score` would give the same record; `emit` per batch."""
    by_sample = {p.sample.sample_id: p.prompt_id for p in prompts}
    targets = [
        PendingSample(
            p.sample.sample_id, p.sample.messages, None, None, True, False, (p.sample.instruction, p.sample.input)
        )
        for p in prompts
    ]

    def store(results: list[PassResult], _tokens: int) -> None:
        emit([(by_sample[r.sample_id], *_mean(r)) for r in results])

    runner = PassRunner(loaded.model, loaded.builder, loaded.pad_id, default_batching(str(loaded.model.device)))
    runner.run(targets, store)


def _mean(result: PassResult) -> tuple[float | None, int | None]:
    if result.status != "ok":
        return None, None
    return result.sum_nll / result.n_response_tokens, result.n_response_tokens
