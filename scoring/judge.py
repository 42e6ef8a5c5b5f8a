"""Pairwise judging of two answers with a local model, under Cherry LLM's review protocol.

The judge prompt is Cherry LLM's, word for word (tianyi-lab/Cherry_LLM,
evaluation/generation/eval.py, `gen_prompt`, commit 03420a9e): a system message, the question,
both answers, and criteria asking for "a single line containing only two values indicating the
scores for Assistant 1 and 2" on a scale of 1 to 10. Cherry parses that first line; a line it
cannot parse is left for a person to fix (score -1), never counted as a tie.

A small local model rarely writes that line unprompted, so the local judge answers in the
protocol's format by construction: its most likely score for Assistant 1 (1 to 10, by the
summed log-likelihood of the score and the space after it, so "1" and "10" compete fairly),
then its most likely score for Assistant 2 (with the line's end) after that score and a space.
The answer is that line ("7 5"), always parseable;
equal scores are a tie, as Cherry's review script counts them. The likelihoods come from the
scorer's loss machinery (scoring.losses.extend) over the prompt's KV cache, run once.

A judge behind an OpenAI-compatible endpoint (scoring.judge_api.ApiJudge) sees the same prompt and
answers in free text; `open_judge` picks one of the two from the `--judge` spec.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from catalog.errors import UserError
from scoring.losses import Piece, extend
from scoring.models import load_model, load_tokenizer, pad_id, resolve_model

if TYPE_CHECKING:
    from scoring.judge_api import ApiJudge

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
TEMPLATE = (
    "[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]"
    "\n\n[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]"
    "\n\n[System]\n{criteria}\n\n"
)
CRITERIA = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above.\nPlease rate the helpfulness, relevance, accuracy, level of details of their "
    "responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates "
    "better overall performance.\nPlease first output a single line containing only two values indicating the "
    "scores for Assistant 1 and 2, respectively. The two scores are separated by a space. In the subsequent line, "
    "please provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that "
    "the order in which the responses were presented does not affect your judgment."
)
PROMPT_HASH = hashlib.sha256("\0".join((SYSTEM, TEMPLATE, CRITERIA)).encode()).hexdigest()
SCORES = range(1, 11)
LOCAL = "local:"
API = "openai:"
KEY_ENV = "OPENAI_API_KEY"  # where an API judge's key is read from, unless told another variable


@dataclass(frozen=True)
class Review:
    """The judge's answer line and the verdict it gives: "first", "second" or "tie" (the order shown)."""

    raw: str
    verdict: str | None  # None: an answer the protocol cannot read (a local judge never gives one)


def parse_score(line: str) -> tuple[float, float] | None:
    """Cherry's parse: the first line, commas as spaces, exactly two numbers; None when it is not that."""
    parts = line.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def verdict(raw: str) -> str | None:
    """Which answer the scores favour ("first", "second", "tie"); None for a malformed answer."""
    scores = parse_score(raw)
    if scores is None:
        return None
    first, second = scores
    return "first" if first > second else "second" if second > first else "tie"


def open_judge(
    spec: str, url: str | None = None, key_env: str = KEY_ENV, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> LocalJudge | ApiJudge:
    """The judge `spec` names: "local:MODEL" (a model loaded here on `device`) or "openai:MODEL" at the
    endpoint `url` (its key in the environment variable `key_env`), checked before any work starts."""
    if spec.startswith(API):
        from scoring.judge_api import ApiJudge  # httpx only when asked for

        return ApiJudge(spec, url, key_env)
    if url is not None:
        raise UserError(f"--judge-url is for an openai:MODEL judge, not {spec}: leave it out")
    return LocalJudge(spec, device, dtype)


class LocalJudge:
    """A local causal LM judging under Cherry's prompt.

    Args:
        spec: "local:" and a model alias, folder or .gguf (as `score --model` takes).
        device, dtype: where it runs.
    """

    def __init__(self, spec: str, device: str, dtype: torch.dtype) -> None:
        if not spec.startswith(LOCAL) or not spec[len(LOCAL) :]:
            raise UserError(
                f"judge {spec!r} is not local:MODEL (an alias, model folder or .gguf) nor openai:MODEL (with "
                "--judge-url)"
            )
        model = resolve_model(spec[len(LOCAL) :])
        self.name = f"{LOCAL}{model.name}@{model.fingerprint[:12]}"
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, device, dtype)

    def prompt_ids(self, question: str, first: str, second: str) -> list[int]:
        """Cherry's system and user messages, through the judge's chat template (else joined by a blank line)."""
        user = TEMPLATE.format(question=question, answer_1=first, answer_2=second, criteria=CRITERIA)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self.tokenizer(f"{SYSTEM}\n\n{user}").input_ids

    def review(self, question: str, first: str, second: str) -> Review:
        """The judge's score line for the two answers shown in this order, and its verdict."""
        ids = self.prompt_ids(question, first, second)
        _, past = extend(self.model, [Piece(ids[:-1])], pad_id(self.tokenizer), keep=True)
        score_1 = self._likeliest(ids[-1], past, lambda s: f"{s} ")
        score_2 = self._likeliest(ids[-1], past, lambda s: f"{score_1} {s}\n")
        raw = f"{score_1} {score_2}"
        return Review(raw, verdict(raw))

    def _likeliest(self, last: int, past, line) -> int:
        """The score s whose answer line(s) is likeliest after the prompt: only the ids after the part
        every candidate line shares are scored."""
        lines = [self.tokenizer(line(s), add_special_tokens=False).input_ids for s in SCORES]
        shared = _common_prefix(lines)
        pieces = [Piece([last, *ids], len(ids) - shared) for ids in lines]
        sums, _ = extend(self.model, pieces, pad_id(self.tokenizer), past, rows=[0] * len(pieces))
        return SCORES[min(range(len(sums)), key=sums.__getitem__)]


def _common_prefix(rows: list[list[int]]) -> int:
    shared = 0
    while all(len(r) > shared + 1 and r[shared] == rows[0][shared] for r in rows):
        shared += 1
    return shared
