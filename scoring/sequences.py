"""Zero-shot, one-shot and response-alone sequences, built in token space.

The contract: prompt ids come from the template (scoring.templates) of everything before the
scored turn, ending where the response starts; the response ids are
`tokenizer(response, add_special_tokens=False)` appended after them, no EOS. The scored
positions are exactly those response ids, identical in both passes; the boundary is never
found by re-tokenising a joined string. The target response is never truncated: a sample
that does not fit is marked unscorable instead. The response-alone pass (IFD's L(y)) scores
the same ids after one start token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from catalog.errors import UserError
from catalog.score import AlpacaFields, Messages
from scoring.templates import Template, Turn, render, template_for


@dataclass(frozen=True)
class Sequence:
    """Token ids whose last `n_response` ids are the scored response."""

    ids: list[int]
    n_response: int
    example_truncated: bool = False

    def __post_init__(self) -> None:
        assert 0 < self.n_response < len(self.ids), "a sequence needs a prompt and a response"


@dataclass(frozen=True)
class Unscorable:
    """Why a pass cannot run: "too_long" (the sample alone does not fit) or "too_long_one_shot"."""

    status: str


class SequenceBuilder:
    """Builds both passes of a sample for one tokenizer, template and length limit.

    Args:
        tokenizer: the scored model's tokenizer.
        template: a Template, or its name ("chat", "alpaca", "alpaca-lf", a .jinja file).
        max_length: the longest sequence (prompt + response) the model is given.

    `fields` / `example_fields`: (instruction, input) of an Alpaca record's last exchange, which
    the Alpaca templates print as their trainers do; None for chat records.
    """

    def __init__(self, tokenizer, template: Template | str, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.template = template if isinstance(template, Template) else template_for(tokenizer, template)
        self.max_length = max_length
        ids = tokenizer("x").input_ids
        self._bos = (
            [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else []
        )

    def response_ids(self, messages: Messages) -> list[int]:
        """The scored ids: the last assistant turn, tokenised alone."""
        return self.tokenizer(messages[-1][1], add_special_tokens=False).input_ids

    def zero_shot(self, messages: Messages, fields: AlpacaFields | None = None) -> Sequence | Unscorable:
        """Prompt = everything before the last assistant turn."""
        response = self.response_ids(messages)
        prompt = self.prompt_ids(_turns(messages[:-1], fields))
        if len(prompt) + len(response) > self.max_length:
            return Unscorable("too_long")
        return Sequence(prompt + response, len(response))

    def response_alone(self, messages: Messages) -> Sequence | Unscorable:
        """The response ids after one start token: [start] + response ids, every response id scored.

        IFD divides L(y|x) by L(y), the loss of the response with no prompt. Cherry LLM scores the
        response after "<s>### Response:" (a prompt of its own), Superfiltering after nothing, its
        first token unscored (GPT-2 has no BOS). Here L(y) scores exactly the ids L(y|x) scores, all
        of them, the first predicted from a single start token (the tokenizer's BOS, else its EOS,
        as GPT-2 starts a text), so the ratio compares like with like: same tokens, prompt or none.
        Never truncated: a response longer than max_length - 1 is "too_long".
        """
        response = self.response_ids(messages)
        if 1 + len(response) > self.max_length:
            return Unscorable("too_long")
        return Sequence([start_token(self.tokenizer), *response], len(response))

    def one_shot(
        self,
        messages: Messages,
        example: Messages,
        fields: AlpacaFields | None = None,
        example_fields: AlpacaFields | None = None,
    ) -> Sequence | Unscorable:
        """Prompt = the example's whole conversation, then everything before the last assistant turn.

        The target's system message (if any) leads; the example's own system message is dropped.
        If it does not fit, the example's response is shortened from its end (at least one
        token is kept) and the sequence is flagged example_truncated.
        """
        response = self.response_ids(messages)
        turns = _turns(messages[:-1], fields)
        system = [t for t in turns[:1] if t.role == "system"]
        context = [t for t in _turns(example[:-1], example_fields) if t.role != "system"]
        target = [t for t in turns if t.role != "system"]
        example_response = example[-1][1]

        def prompt_with(example_text: str) -> list[int]:
            return self.prompt_ids(system + context + [Turn("assistant", example_text)] + target)

        prompt = prompt_with(example_response)
        if len(prompt) + len(response) <= self.max_length:
            return Sequence(prompt + response, len(response))
        kept = self._longest_example_that_fits(example_response, prompt_with, len(response))
        if kept is None:
            return Unscorable("too_long_one_shot")
        return Sequence(kept + response, len(response), example_truncated=True)

    def _longest_example_that_fits(
        self, example_response: str, prompt_with: Callable[[str], list[int]], n_response: int
    ) -> list[int] | None:
        """Binary search on how many of the example response's tokens to keep (at least one)."""
        tokens = self.tokenizer(example_response, add_special_tokens=False).input_ids
        best, lo, hi = None, 1, len(tokens) - 1
        while lo <= hi:
            keep = (lo + hi) // 2
            prompt = prompt_with(self.tokenizer.decode(tokens[:keep]))
            if len(prompt) + n_response <= self.max_length:
                best, lo = prompt, keep + 1
            else:
                hi = keep - 1
        return best

    def prompt_ids(self, turns: list[Turn]) -> list[int]:
        """Ids of `turns` (ending with a user turn) up to where the assistant's response starts."""
        return render(self.tokenizer, self.template, turns, self._bos)


def start_token(tokenizer) -> int:
    """The one token before a response scored alone: BOS, else EOS (GPT-2's only special token)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token: IFD cannot score a response alone")
    return start


def _turns(messages: Messages, fields: AlpacaFields | None) -> list[Turn]:
    """Messages (ending with a user turn) as turns; the last user turn carries the Alpaca record's
    instruction and input (a LLaMA-Factory row's history turns have none)."""
    last = len(messages) - 1
    return [Turn(role, content, fields if i == last else None) for i, (role, content) in enumerate(messages)]
