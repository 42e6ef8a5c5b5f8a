"""Zero-shot and one-shot sequences, built in token space.

The contract: prompt ids come from the chat template (or the Alpaca prompt) of everything
before the scored turn, with the generation prompt; the response ids are
`tokenizer(response, add_special_tokens=False)` appended after them, no EOS. The scored
positions are exactly those response ids, identical in both passes; the boundary is never
found by re-tokenising a joined string. The target response is never truncated: a sample
that does not fit is marked unscorable instead.
"""

from __future__ import annotations

from dataclasses import dataclass

Messages = tuple[tuple[str, str], ...]  # (role, content); optional system, user/assistant turns, ends with assistant

ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


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
        template: "chat" (the tokenizer's chat template) or "alpaca".
        max_length: the longest sequence (prompt + response) the model is given.
    """

    def __init__(self, tokenizer, template: str, max_length: int) -> None:
        if template == "chat" and not tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        ids = tokenizer("x").input_ids
        self._bos = (
            [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else []
        )

    def response_ids(self, messages: Messages) -> list[int]:
        """The scored ids: the last assistant turn, tokenised alone."""
        return self.tokenizer(messages[-1][1], add_special_tokens=False).input_ids

    def zero_shot(self, messages: Messages) -> Sequence | Unscorable:
        """Prompt = everything before the last assistant turn."""
        response = self.response_ids(messages)
        prompt = self.prompt_ids(list(messages[:-1]))
        if len(prompt) + len(response) > self.max_length:
            return Unscorable("too_long")
        return Sequence(prompt + response, len(response))

    def one_shot(self, messages: Messages, example: Messages) -> Sequence | Unscorable:
        """Prompt = the example's whole conversation, then everything before the last assistant turn.

        The target's system message (if any) leads; the example's own system message is dropped.
        If it does not fit, the example's response is shortened from its end (at least one
        token is kept) and the sequence is flagged example_truncated.
        """
        response = self.response_ids(messages)
        system = [m for m in messages[:1] if m[0] == "system"]
        context = [m for m in example if m[0] != "system"][:-1]
        target = [m for m in messages[:-1] if m[0] != "system"]
        example_response = example[-1][1]

        def prompt_with(example_text: str) -> list[int]:
            return self.prompt_ids(system + context + [("assistant", example_text)] + target)

        prompt = prompt_with(example_response)
        if len(prompt) + len(response) <= self.max_length:
            return Sequence(prompt + response, len(response))
        kept = self._longest_example_that_fits(example_response, prompt_with, len(response))
        if kept is None:
            return Unscorable("too_long_one_shot")
        return Sequence(kept + response, len(response), example_truncated=True)

    def _longest_example_that_fits(self, example_response: str, prompt_with, n_response: int) -> list[int] | None:
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

    def prompt_ids(self, turns: list[tuple[str, str]]) -> list[int]:
        """Ids of `turns` (ending with a user turn) followed by the assistant's generation prompt."""
        if self.template == "chat":
            chat = [{"role": role, "content": content} for role, content in turns]
            return list(
                self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
            )
        return self._bos + self.tokenizer(alpaca_prompt(turns), add_special_tokens=False).input_ids


def alpaca_prompt(turns: list[tuple[str, str]]) -> str:
    """The Alpaca prompt: a header (or the system message), then "### Instruction / ### Response"
    blocks for earlier exchanges, then the last instruction and an open "### Response:\\n".

    With an example exchange first, this is the example's full block (prompt + response),
    a blank line, and the target's prompt.
    """
    header = turns[0][1] if turns and turns[0][0] == "system" else ALPACA_HEADER
    turns = [t for t in turns if t[0] != "system"]
    blocks, text = [], f"{header}\n\n"
    for role, content in turns:
        if role == "user":
            text += f"### Instruction:\n{content}\n\n### Response:\n"
        else:
            blocks.append(text + content)
            text = f"{header}\n\n"
    return "\n\n".join(blocks + [text])
