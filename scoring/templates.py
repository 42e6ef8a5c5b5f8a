"""Prompt templates exactly as trainers render them, as token ids.

MIWV measures a model under the prompt it will be fine-tuned with, so each template here
reproduces one trainer's rendering byte for byte:

- "alpaca": Stanford Alpaca's PROMPT_DICT (tatsu-lab/stanford_alpaca train.py; also Cherry's
  IFD code): the input form (its own header and a "### Input:" section) when the sample has
  an input, else the no-input form; BOS when the tokenizer adds one.
- "alpaca-lf": LLaMA-Factory's `alpaca` template (src/llamafactory/data/template.py): the
  system text once (the default header unless the sample has a system message), the user
  content instruction + "\\n" + input (its alpaca converter), each turn
  "### Instruction:\\n{content}\\n\\n### Response:\\n", each earlier assistant turn followed by
  EOS and "\\n\\n"; every piece tokenised on its own, no BOS (its `_encode`).
- "chat" or a .jinja file: a Jinja chat template (the tokenizer's own, or one from a file)
  rendered over the whole conversation by `apply_chat_template`.

A template's identity is its name, the revision of this rendering code and the SHA-256 of its
text, so scores from another rendering are never mixed with these.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from catalog.choices import TEMPLATES
from catalog.errors import UserError
from catalog.score import TemplateKey

# Bumped whenever a rendering changes; 1 = before trainer-exact templates (migration 0006).
TEMPLATE_REVISION = 2

STANFORD_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
STANFORD_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
BLOCK_SEPARATOR = "\n\n"  # between an earlier (or the example's) full block and the next prompt

LF_DEFAULT_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)
LF_USER = "### Instruction:\n{content}\n\n### Response:\n"
LF_AFTER_EOS = "\n\n"


@dataclass(frozen=True)
class Turn:
    """One message; `fields` = (instruction, input) when it is an Alpaca record's user turn."""

    role: str  # system | user | assistant
    content: str
    fields: tuple[str, str] | None = None


@dataclass(frozen=True)
class Template:
    """How prompts are rendered: kind "chat" (Jinja `text`), "alpaca" or "alpaca-lf"."""

    name: str  # "chat", "alpaca", "alpaca-lf" or the .jinja file's name
    kind: str
    text: str  # the Jinja source, or the built-in format strings

    @property
    def key(self) -> TemplateKey:
        return TemplateKey(self.name, TEMPLATE_REVISION, hashlib.sha256(self.text.encode()).hexdigest())


BUILT_IN_TEXT = {
    "alpaca": STANFORD_PROMPT_INPUT + "\0" + STANFORD_PROMPT_NO_INPUT + "\0" + BLOCK_SEPARATOR,
    "alpaca-lf": LF_DEFAULT_SYSTEM + "\0" + LF_USER + "\0{eos}" + LF_AFTER_EOS,
}


def template_for(tokenizer, name: str) -> Template:
    """The template called `name` (see TEMPLATES) or read from a .jinja file; UserError otherwise."""
    if name == "chat":
        if not tokenizer.chat_template:
            raise UserError(
                "--template chat: this model's tokenizer has no chat template; use --template alpaca, "
                "alpaca-lf or a .jinja file"
            )
        return Template("chat", "chat", str(tokenizer.chat_template))
    if name in BUILT_IN_TEXT:
        return Template(name, name, BUILT_IN_TEXT[name])
    path = Path(name).expanduser()
    if path.suffix == ".jinja":
        if not path.is_file():
            raise UserError(f"--template {name}: no such file ({path.resolve()})")
        return Template(path.name, "chat", path.read_text(encoding="utf-8"))
    raise UserError(f"unknown --template {name!r}; use one of {', '.join(TEMPLATES)} or a .jinja file")


def render(tokenizer, template: Template, turns: list[Turn], bos: list[int]) -> list[int]:
    """Prompt ids of `turns` (optional system, then alternating turns ending with a user turn),
    ending where the scored response starts. `bos`: [bos id] when the tokenizer adds one."""
    if template.kind == "chat":
        chat = [{"role": t.role, "content": t.content} for t in turns]
        return list(
            tokenizer.apply_chat_template(
                chat, chat_template=template.text, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    if template.kind == "alpaca":
        return bos + _stanford(tokenizer, turns)
    return _llama_factory(tokenizer, turns)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids if text else []


def _stanford(tokenizer, turns: list[Turn]) -> list[int]:
    """Each exchange as its full Alpaca block (prompt, then the response's own ids), a blank line
    between blocks, then the last prompt. A system message replaces the header of the blocks."""
    system = turns[0].content if turns[0].role == "system" else None
    ids, pending = [], ""
    for turn in turns:
        if turn.role == "user":
            ids += _encode(tokenizer, pending + _stanford_prompt(turn, system))
        elif turn.role == "assistant":
            ids += _encode(tokenizer, turn.content)
            pending = BLOCK_SEPARATOR
    return ids


def _stanford_prompt(turn: Turn, system: str | None) -> str:
    instruction, input = turn.fields or (turn.content, "")
    if input:
        prompt = STANFORD_PROMPT_INPUT.format_map({"instruction": instruction, "input": input})
    else:
        prompt = STANFORD_PROMPT_NO_INPUT.format_map({"instruction": instruction})
    return prompt if system is None else system + prompt[prompt.index("\n\n") :]


def _llama_factory(tokenizer, turns: list[Turn]) -> list[int]:
    system = turns[0].content if turns[0].role == "system" else LF_DEFAULT_SYSTEM
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = _encode(tokenizer, system)
    for turn in turns:
        if turn.role == "user":
            content = "\n".join(part for part in turn.fields if part) if turn.fields else turn.content
            ids += _encode(tokenizer, LF_USER.replace("{content}", content))
        elif turn.role == "assistant":
            ids += _encode(tokenizer, turn.content) + eos + _encode(tokenizer, LF_AFTER_EOS)
    return ids
