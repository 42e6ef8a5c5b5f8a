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

A Jinja template is user code: before anything is scored with it, it renders a probe
conversation within PROBE_SECONDS, in the sandbox transformers renders it in, or is refused with
one line naming it and the problem.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from catalog.choices import TEMPLATES
from catalog.errors import ArgumentError, UserError
from catalog.records import LLAMA_FACTORY_INPUT_SEPARATOR, alpaca_user_text
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


PROBE_SECONDS = 5.0  # a chat template renders a short conversation in milliseconds
# What every template must render: an exchange, then the turn whose response is scored.
PROBE = [
    Turn("system", "You are a careful assistant."),
    Turn("user", "Name a primary colour."),
    Turn("assistant", "Blue."),
    Turn("user", "And another one?"),
]


def template_for(tokenizer, name: str) -> Template:
    """The template called `name` (see TEMPLATES) or read from a .jinja file, checked by rendering
    PROBE; ArgumentError naming it and the problem otherwise."""
    if name == "chat":
        if not tokenizer.chat_template:
            raise ArgumentError(
                "{0} chat: this model's tokenizer has no chat template; use alpaca, alpaca-lf or a .jinja file",
                "template",
            )
        return _checked(tokenizer, Template("chat", "chat", str(tokenizer.chat_template)), name)
    if name in BUILT_IN_TEXT:
        return Template(name, name, BUILT_IN_TEXT[name])
    path = Path(name).expanduser()
    if path.suffix == ".jinja":
        return _checked(tokenizer, Template(path.name, "chat", _read(path, name)), name)
    raise ArgumentError(
        "unknown {0} " + _literal(f"{name!r}; use one of {', '.join(TEMPLATES)} or a .jinja file"), "template"
    )


def recorded_template(tokenizer, name: str, text: str | None) -> Template:
    """The template a scorer recorded (its name and text), to rebuild the inputs it saw; UserError
    when a .jinja scorer's text was not recorded (scored before catalog revision 0008)."""
    if name in BUILT_IN_TEXT:
        return Template(name, name, BUILT_IN_TEXT[name])
    if text is not None:
        return Template(name, "chat", text)
    if name == "chat":
        return template_for(tokenizer, "chat")
    raise UserError(
        f"this scorer did not record the text of its template {name!r} (it scored before the catalog kept "
        f"template texts); score again with --template pointing at that file to record it"
    )


def _refused(name: str, problem: str) -> ArgumentError:
    """The error `template NAME: PROBLEM` (the CLI says --template), whatever braces NAME and PROBLEM hold."""
    return ArgumentError("{0} " + _literal(f"{name}: {problem}"), "template")


def _literal(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _read(path: Path, name: str) -> str:
    """A .jinja file's text: UTF-8, not empty."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise _refused(name, f"no such file ({path.resolve()})") from None
    except IsADirectoryError:
        raise _refused(name, "is a folder, not a file") from None
    except UnicodeDecodeError as error:
        raise _refused(
            name, f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start})"
        ) from None
    if not text.strip():
        raise _refused(name, "the file is empty")
    return text


def _checked(tokenizer, template: Template, name: str) -> Template:
    """`template` once it renders PROBE to a prompt within PROBE_SECONDS; a template that refuses
    the system message (as Gemma's and Mistral's do, by raise_exception) renders PROBE without it."""
    import jinja2

    try:
        with _time_limit(PROBE_SECONDS):
            try:
                ids = render(tokenizer, template, PROBE, [])
            except jinja2.TemplateError as error:
                if type(error) is not jinja2.TemplateError:  # not the template's own raise_exception
                    raise
                ids = render(tokenizer, template, PROBE[1:], [])
    except _TookTooLong:
        raise _refused(
            name, f"rendering a four-message conversation took over {PROBE_SECONDS:g} s (a loop that does not end?)"
        ) from None
    except Exception as error:  # a template is user code: whatever it raises is the user's to fix
        raise _refused(name, _problem(error)) from None
    if not ids:
        raise _refused(name, "renders an empty prompt for a conversation (system, user, assistant, user)")
    return template


def _problem(error: Exception) -> str:
    """What went wrong rendering a template, in one line."""
    import jinja2

    if isinstance(error, jinja2.TemplateSyntaxError):
        problem = f"line {error.lineno}: Jinja syntax error: {error.message}"
    elif isinstance(error, RecursionError):
        problem = "recursion too deep (a macro that calls itself without end?)"
    elif isinstance(error, jinja2.TemplateError):
        problem = f"does not render a conversation (system, user, assistant, user): {error}"
    else:
        problem = f"does not render a conversation (system, user, assistant, user): {type(error).__name__}: {error}"
    return " ".join(problem.split())


class _TookTooLong(BaseException):
    """Raised inside a render that ran past its time limit (a BaseException: Jinja wraps Exceptions)."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _TookTooLong in the code run inside, in this thread, once `seconds` have passed.

    Jinja renders in pure Python, so a line tracer sees every step of a loop that does not end;
    unlike a signal it works in any thread (the web server's), unlike a subprocess it costs nothing."""
    deadline = time.monotonic() + seconds

    def trace(frame, event, arg):
        if time.monotonic() > deadline:
            raise _TookTooLong
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(previous)


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
            content = alpaca_user_text(*turn.fields, LLAMA_FACTORY_INPUT_SEPARATOR) if turn.fields else turn.content
            ids += _encode(tokenizer, LF_USER.replace("{content}", content))
        elif turn.role == "assistant":
            ids += _encode(tokenizer, turn.content) + eos + _encode(tokenizer, LF_AFTER_EOS)
    return ids
