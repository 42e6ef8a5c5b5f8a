"""Loading the causal LM being scored, and the choices that follow from it (template, length)."""

from __future__ import annotations

from catalog.errors import UserError
from scoring.models import ModelSpec
from scoring.sequences import TEMPLATES

MAX_LENGTH_CAP = 4096


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.path, local_files_only=True)


def choose_template(tokenizer, requested: str | None) -> str:
    """The tokenizer's chat template when it has one, else Alpaca; `requested` overrides."""
    if requested is None:
        return "chat" if tokenizer.chat_template else "alpaca"
    if requested not in TEMPLATES:
        raise UserError(f"unknown --template {requested!r}; use one of {', '.join(TEMPLATES)}")
    if requested == "chat" and not tokenizer.chat_template:
        raise UserError("--template chat: this model's tokenizer has no chat template; use --template alpaca")
    return requested


def default_max_length(spec: ModelSpec) -> int:
    """The model's context length, capped at MAX_LENGTH_CAP."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.path, local_files_only=True)
    return min(getattr(config, "max_position_embeddings", MAX_LENGTH_CAP) or MAX_LENGTH_CAP, MAX_LENGTH_CAP)


def load_model(spec: ModelSpec, device: str, dtype):
    """The model in eval mode on `device`, weights in `dtype`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, local_files_only=True)
    return model.to(device).eval()


def pad_id(tokenizer) -> int:
    """Any id works (padding is never attended to); the tokenizer's own when it has one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
