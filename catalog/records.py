"""Record shapes (Alpaca, ShareGPT, OpenAI messages) normalised to one Sample.

Every sample is stored as a list of messages (optional system, then user/assistant turns
ending with an assistant turn) plus the Alpaca fields where the record had them. Its id is
a content hash of the messages, so the same conversation is one sample whatever file or
shape it came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
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
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_id(self) -> int:
        """Signed 64-bit id: the first 8 bytes of SHA-256 over the canonical messages JSON."""
        canonical = json.dumps([list(m) for m in self.messages], ensure_ascii=False, separators=(",", ":"))
        return int.from_bytes(hashlib.sha256(canonical.encode("utf-8")).digest()[:8], "big", signed=True)

    @property
    def user_text(self) -> str:
        """The text that is embedded: the first user message (instruction + input for Alpaca)."""
        return next(content for role, content in self.messages if role == "user")

    @property
    def n_turns(self) -> int:
        """Number of assistant turns (1 for Alpaca)."""
        return sum(role == "assistant" for role, _ in self.messages)


def alpaca_user_text(instruction: str, input: str) -> str:
    """Instruction + blank line + input, or the instruction alone when input is empty."""
    return f"{instruction}\n\n{input}" if input else instruction


def detect_shape(record: Any) -> str | None:
    """The shape a record's keys announce, or None."""
    if not isinstance(record, dict):
        return None
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def to_sample(record: Any, shape: str) -> Sample:
    """Normalise one record of `shape`; raises RecordError saying what is wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"expected an object, got {type(record).__name__}")
    if shape == "alpaca":
        return _from_alpaca(record)
    if shape == "sharegpt":
        turns = _require(record, "conversations", list)
        messages = [_turn(t, "from", "value", _SHAREGPT_ROLES, i) for i, t in enumerate(turns)]
        return Sample(messages=_checked(messages), extra=_rest(record, {"conversations"}))
    if shape == "openai":
        turns = _require(record, "messages", list)
        messages = [_turn(t, "role", "content", _OPENAI_ROLES, i) for i, t in enumerate(turns)]
        return Sample(messages=_checked(messages), extra=_rest(record, {"messages"}))
    raise ValueError(f"unknown shape {shape!r}")


def _from_alpaca(record: dict) -> Sample:
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
    messages = (("user", alpaca_user_text(instruction, input)), ("assistant", output))
    extra = _rest(record, {"instruction", "input", "output"})
    return Sample(messages=messages, instruction=instruction, input=input, output=output, extra=extra)


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


def _rest(record: dict, used: set[str]) -> dict[str, Any]:
    """The record's other fields; null ones are absent (a Parquet column another row needed)."""
    return {key: value for key, value in record.items() if key not in used and value is not None}
