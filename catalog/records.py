"""Record shapes (Alpaca, ShareGPT, OpenAI messages) normalised to one Sample.

Every sample is stored as a list of messages (optional system, then user/assistant turns
ending with an assistant turn) plus, for a record in Alpaca shape, the Alpaca fields of its
last exchange (instruction and input apart, as each trainer joins them its own way). Its id is
a content hash of the messages, so the same conversation is one sample whatever file or shape
it came from. The LLaMA-Factory flavours are read too: Alpaca with `system` and `history`
([instruction, response] pairs), ShareGPT with a top-level `system`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from catalog.choices import RECORD_SHAPES

SHAPES = RECORD_SHAPES

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """A record that does not fit its shape; the message says what is wrong."""


@dataclass(frozen=True)
class Sample:
    """One normalised training sample."""

    messages: tuple[tuple[str, str], ...]  # (role, content), roles: system?, user, assistant, ...
    # The Alpaca fields of the last exchange (an Alpaca-shaped record's), else None:
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def sample_id(self) -> int:
        """Signed 64-bit id: the first 8 bytes of SHA-256 over the canonical messages JSON."""
        canonical = json.dumps([list(m) for m in self.messages], ensure_ascii=False, separators=(",", ":"))
        return int.from_bytes(hashlib.sha256(canonical.encode("utf-8")).digest()[:8], "big", signed=True)

    @cached_property
    def extra_json(self) -> str | None:
        """The extra fields as stored (JSON text), None when there are none."""
        if not self.extra:
            return None
        text = json.dumps(self.extra, ensure_ascii=False, default=str)
        text.encode("utf-8")  # a lone surrogate cannot be stored: raise here, not in the database
        return text

    @property
    def user_text(self) -> str:
        """The text that is embedded: the first user message (instruction + input for Alpaca)."""
        return next(content for role, content in self.messages if role == "user")

    @property
    def n_turns(self) -> int:
        """Number of assistant turns (1 for Alpaca)."""
        return sum(role == "assistant" for role, _ in self.messages)


STORED_INPUT_SEPARATOR = "\n\n"  # instruction, blank line, input: the stored (and embedded) user turn
LLAMA_FACTORY_INPUT_SEPARATOR = "\n"  # LLaMA-Factory's alpaca converter: instruction + "\n" + input


def alpaca_user_text(instruction: str, input: str, separator: str = STORED_INPUT_SEPARATOR) -> str:
    """Instruction + `separator` + input, or the instruction alone when input is empty."""
    return f"{instruction}{separator}{input}" if input else instruction


def detect_shape(record: Any) -> str | None:
    """The shape a record's keys announce, or None."""
    if not isinstance(record, dict):
        return None
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "instruction" in record or "output" in record:
        return "alpaca"
    return None


def rename_columns(record: Any, columns: dict[str, str]) -> Any:
    """`record` with each source field of `columns` ({target: source}) renamed to its target."""
    if not columns or not isinstance(record, dict):
        return record
    sources = {source: target for target, source in columns.items()}
    return {sources.get(key, key): value for key, value in record.items()}


def to_sample(record: Any, shape: str) -> Sample:
    """Normalise one record of `shape`; raises RecordError saying what is wrong.

    Text that cannot be stored as UTF-8 (a lone surrogate from a JSON escape such as
    "\\ud800") and nesting too deep to serialise are record errors, not crashes.
    """
    if not isinstance(record, dict):
        raise RecordError(f"expected an object, got {type(record).__name__}")
    try:
        sample = _normalised(record, shape)
        _ = (sample.sample_id, sample.extra_json)  # both encode what is stored: fail here, not in the database
    except RecursionError:
        raise RecordError("nested too deeply to store") from None
    except UnicodeEncodeError:
        place, char = _first_unencodable(record)
        raise RecordError(
            f"{place} holds a lone surrogate {storable_text(char)} (half of a \\u escape pair), "
            "which cannot be stored as text; fix or drop the row"
        ) from None
    return sample


def _normalised(record: dict, shape: str) -> Sample:
    if shape == "alpaca":
        return _from_alpaca(record)
    if shape == "sharegpt":
        turns = _require(record, "conversations", list)
        messages = [_turn(t, "from", "value", _SHAREGPT_ROLES, i) for i, t in enumerate(turns)]
        system = _system(record)
        if system and messages and messages[0][0] == "system":
            raise RecordError("a top-level 'system' and a system turn in 'conversations'; keep one")
        messages = [("system", system)] * bool(system) + messages
        return Sample(messages=_checked(messages), extra=_rest(record, {"conversations", "system"}))
    if shape == "openai":
        turns = _require(record, "messages", list)
        messages = [_turn(t, "role", "content", _OPENAI_ROLES, i) for i, t in enumerate(turns)]
        return Sample(messages=_checked(messages), extra=_rest(record, {"messages"}))
    raise ValueError(f"unknown shape {shape!r}")


def _from_alpaca(record: dict) -> Sample:
    """One Alpaca exchange, or (LLaMA-Factory) a conversation: system, history turns, this exchange.

    The user turn is stored as instruction + blank line + input; the fields are kept apart too
    (for a conversation as well), so a template renders them as its trainer does: LLaMA-Factory
    trains instruction + "\n" + input, with or without a system prompt and history.
    """
    instruction = _require(record, "instruction", str)
    output = _require(record, "output", str)
    input = record.get("input")
    if input is None:
        input = ""
    elif not isinstance(input, str):
        raise RecordError(f"field 'input' must be a string, got {type(input).__name__}")
    if not instruction.strip():
        raise RecordError("empty instruction")
    if not output.strip():
        raise RecordError("empty response (field 'output')")
    system, history = _system(record), _history(record)
    exchange = (("user", alpaca_user_text(instruction, input)), ("assistant", output))
    extra = _rest(record, {"instruction", "input", "output", "system", "history"})
    messages = [("system", system)] * bool(system) + history + list(exchange)
    return Sample(messages=_checked(messages), instruction=instruction, input=input, output=output, extra=extra)


def _system(record: dict) -> str:
    """The record's top-level system prompt ("" when absent or empty). A whitespace-only one is
    content: LLaMA-Factory trains " " as the system text, in place of its default header."""
    system = record.get("system")
    if system is None:
        return ""
    if not isinstance(system, str):
        raise RecordError(f"field 'system' must be a string, got {type(system).__name__}")
    return system


def _history(record: dict) -> list[tuple[str, str]]:
    """LLaMA-Factory `history`: [instruction, response] pairs before the current exchange."""
    history = record.get("history")
    if history is None:
        return []
    if not isinstance(history, list):
        raise RecordError(
            f"field 'history' must be a list of [instruction, response] pairs, got {type(history).__name__}"
        )
    messages = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(text, str) for text in pair)):
            raise RecordError(f"history[{i}] must be an [instruction, response] pair of strings")
        messages += [("user", pair[0]), ("assistant", pair[1])]
    return messages


def _require(record: dict, key: str, kind: type) -> Any:
    if key not in record or record[key] is None:
        raise RecordError(f"missing required field '{key}'")
    value = record[key]
    if not isinstance(value, kind):
        raise RecordError(f"field '{key}' must be a {_TYPE_NAMES[kind]}, got {type(value).__name__}")
    return value


_TYPE_NAMES = {str: "string", list: "list"}


def _turn(turn: Any, role_key: str, content_key: str, roles: dict[str, str], index: int) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise RecordError(f"turn {index} must be an object, got {type(turn).__name__}")
    role = turn.get(role_key)
    if role not in roles:
        raise RecordError(f"turn {index}: unknown {role_key} {role!r} (expected one of {sorted(roles)})")
    content = turn.get(content_key)
    if not isinstance(content, str):
        raise RecordError(f"turn {index}: '{content_key}' must be a string, got {type(content).__name__}")
    return roles[role], content


def _checked(messages: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Enforce: optional system first, then user/assistant alternating, ending with a non-empty assistant turn."""
    turns = messages[1:] if messages and messages[0][0] == "system" else messages
    if not turns:
        raise RecordError("no user or assistant turns")
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise RecordError(f"turns must alternate user/assistant starting with user; turn {i} is {role}")
    if turns[-1][0] != "assistant":
        raise RecordError("the conversation must end with an assistant turn")
    if not turns[0][1].strip():
        raise RecordError("empty first user turn")
    if not turns[-1][1].strip():
        raise RecordError("empty response (last assistant turn)")
    return tuple(messages)


def _first_unencodable(record: Any) -> tuple[str, str]:
    """Where in `record` (a field path) the first character UTF-8 cannot hold is, and that character.

    Iterative, so it also works on records nested deeper than the recursion limit.
    """
    stack: list[tuple[str, Any]] = [("the row", record)]
    while stack:
        place, value = stack.pop()
        if isinstance(value, str) and _unencodable(value):
            return place, _unencodable(value)
        if isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                name = f"field {key!r}" if place == "the row" else f"{place}[{key!r}]"
                if isinstance(key, str) and _unencodable(key):
                    return f"the name of {name}", _unencodable(key)
                stack.append((name, item))
        elif isinstance(value, list | tuple):
            stack.extend((f"{place}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return "the row", ""


def _unencodable(text: str) -> str:
    """The first character of `text` that UTF-8 cannot hold, or ""."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return text[error.start]
    return ""


def storable_text(text: str) -> str:
    """`text` with anything UTF-8 cannot hold (lone surrogates) written as a backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _rest(record: dict, used: set[str]) -> dict[str, Any]:
    """The record's other fields; null ones are absent (a Parquet column another row needed)."""
    return {key: value for key, value in record.items() if key not in used and value is not None}
