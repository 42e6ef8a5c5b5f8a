"""The zero-shot and one-shot inputs of a sample as a scorer's model saw them.

The one module of the web package that calls into scoring/: it rebuilds the token ids the
scorer builds (the scorer's tokenizer, its recorded template text and max length) and decodes
them for display, the scored response ids token by token. A page only reads: it takes the
tokenizer from what this machine holds and never downloads or converts a model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

from catalog.score import AlpacaFields, Messages
from scoring.models import tokenizer_at_hand
from scoring.sequences import SequenceBuilder, Unscorable
from scoring.templates import TEMPLATE_REVISION, recorded_template

MAX_SHOWN_TOKENS = 2000  # response tokens shown one by one; the rest as one piece


@dataclass(frozen=True)
class Pass:
    """One pass's input: the prompt text and the scored response tokens, or why it cannot run."""

    status: str  # "ok", "too_long", "too_long_one_shot"
    prompt: str = ""
    response: tuple[tuple[int | None, str], ...] = ()  # (token id, its text); None: the rest, past MAX_SHOWN_TOKENS
    n_prompt: int = 0
    example_truncated: bool = False


@dataclass(frozen=True)
class Inputs:
    zero: Pass
    one: Pass | None  # None: no neighbour
    warning: str | None = None  # e.g. the model files changed since it scored


@dataclass(frozen=True)
class ScorerKey:
    """What a scorer rendered with: its model (as named, and where it came from), the files'
    fingerprint, template, template revision, the hash of the template's text (None before
    revision 2) and the text (None before catalog revision 0008)."""

    model: str
    source: str
    fingerprint: str
    template: str
    template_revision: int
    template_hash: str | None = None
    template_text: str | None = None


_lock = threading.Lock()


@lru_cache(maxsize=4)
def _tokenizer(model: str, source: str):
    return tokenizer_at_hand(model, source)


def model_inputs(
    scorer: ScorerKey,
    max_length: int,
    messages: Messages,
    example: Messages | None,
    fields: AlpacaFields | None = None,
    example_fields: AlpacaFields | None = None,
) -> Inputs:
    """Both passes of a sample for the scorer (model, template, max_length) that scored it.

    Raises UserError when the model's tokenizer is not on this machine, or the scorer did not
    record its .jinja template's text (the page says so, and how to get them).
    """
    with _lock:  # a tokenizer loads once, even when two pages ask at the same moment
        tokenizer, current = _tokenizer(scorer.model, scorer.source)
    builder = SequenceBuilder(
        tokenizer, recorded_template(tokenizer, scorer.template, scorer.template_text), max_length
    )
    warnings = []
    if current != scorer.fingerprint:
        warnings.append(f"the files of {scorer.model} changed since it scored this sample")
    if scorer.template_revision != TEMPLATE_REVISION:
        warnings.append(f"it scored with an older rendering of the {scorer.template!r} template")
    elif scorer.template_hash is not None and builder.template.key.digest != scorer.template_hash:
        warnings.append(f"the {scorer.template!r} template of the tokenizer here is not the text it scored with")
    warning = "; ".join(warnings) + "; these inputs are rebuilt with the current code" if warnings else None
    zero = _render(builder, builder.zero_shot(messages, fields))
    one = _render(builder, builder.one_shot(messages, example, fields, example_fields)) if example else None
    return Inputs(zero, one, warning)


def _render(builder: SequenceBuilder, sequence) -> Pass:
    if isinstance(sequence, Unscorable):
        return Pass(sequence.status)
    tokenizer = builder.tokenizer
    prompt_ids = sequence.ids[: -sequence.n_response]
    response_ids = sequence.ids[-sequence.n_response :]
    return Pass(
        "ok",
        tokenizer.decode(prompt_ids),
        _pieces(tokenizer, response_ids),
        len(prompt_ids),
        sequence.example_truncated,
    )


def _pieces(tokenizer, ids: list[int]) -> tuple[tuple[int | None, str], ...]:
    """Each id with the text it adds. A character split over several byte-level tokens is shown
    with the token that completes it."""
    shown_ids, rest = ids[:MAX_SHOWN_TOKENS], ids[MAX_SHOWN_TOKENS:]
    pieces, shown = [], ""
    for k, token in enumerate(shown_ids):
        text = tokenizer.decode(shown_ids[: k + 1])
        if text.endswith("\ufffd"):
            pieces.append((token, ""))
            continue
        pieces.append((token, text[len(shown) :] if text.startswith(shown) else tokenizer.decode([token])))
        shown = text
    if rest:
        pieces.append((None, tokenizer.decode(ids)[len(shown) :]))
    return tuple(pieces)
