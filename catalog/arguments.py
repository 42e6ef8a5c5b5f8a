"""Checks of the arguments the Python API (miwv.py) takes: types, ranges and choices.

The CLI calls the API, so these are its checks too: one set, whose messages name the API
argument ("max_length") for the CLI to word as its flag ("--max-length"). `checked` runs them
when a verb is called, before it reads, loads or writes anything. No torch or model imports.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, NoReturn

from catalog.choices import METRICS
from catalog.errors import ArgumentError

INT32 = (-(2**31), 2**31 - 1)  # counts, ids, lengths and seeds are stored in INTEGER columns
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
SELECTION_REF = re.compile(r"selection:([0-9]{1,10})")

Check = Callable[[str, Any], Any]  # (API name, value) -> the value to use; ArgumentError if it cannot be used


def refuse(name: str, wanted: str, value: Any) -> NoReturn:
    """One line naming the argument, what it must be, and what it got."""
    raise ArgumentError("{0} must be " + wanted.replace("{", "{{").replace("}", "}}"), name, detail=f"got {value!r}")


def whole(minimum: int = 1, maximum: int = INT32[1]) -> Check:
    """A whole number in [minimum, maximum] (a bool is not one)."""

    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, Integral) or not minimum <= value <= maximum:
            refuse(name, f"a whole number from {minimum} to {maximum}", value)
        return int(value)

    return check


def number(minimum: float, maximum: float = math.inf, *, above: bool = False, wanted: str | None = None) -> Check:
    """A real number from `minimum` (exclusive when `above`) to `maximum`; never NaN, nor a bool.
    `wanted` words the range in the argument's own terms ("a positive number of seconds")."""
    wanted = wanted or f"a number {'above' if above else 'of at least'} {minimum:g}" + (
        f" and at most {maximum:g}" if maximum < math.inf else ""
    )

    def check(name: str, value: Any) -> float:
        real = isinstance(value, Real) and not isinstance(value, bool)
        if not (real and (minimum < value if above else minimum <= value) and value <= maximum):  # NaN: False
            refuse(name, wanted, value)
        return float(value)

    return check


def one_of(choices: tuple[str, ...] | Mapping[str, Any]) -> Check:
    """One of `choices` (a tuple of catalog.choices, or the keys of a mapping)."""
    names = tuple(choices)

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in names:
            refuse(name, f"one of {', '.join(names)}", value)
        return value

    return check


def metric_names(name: str, value: Any) -> tuple[str, ...]:
    """What a score run computes: "miwv,ifd" or a list of names; each once, in METRICS' order."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, list | tuple) and items and all(isinstance(i, str) and i.strip() in METRICS for i in items):
        chosen = {item.strip() for item in items}
        return tuple(metric for metric in METRICS if metric in chosen)
    refuse(name, f"one or more of {', '.join(METRICS)} (comma-separated)", value)


def selection_ref(name: str, value: Any) -> int:
    """A score run's screen, "selection:ID" (a recorded selection): its id."""
    match = SELECTION_REF.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or not 1 <= int(match[1]) <= INT32[1]:
        refuse(name, "selection:ID, the id of a recorded selection (see `selections`)", value)
    return int(match[1])


def text(name: str, value: Any) -> str:
    """A string that is not empty."""
    if not isinstance(value, str) or not value:
        refuse(name, "a non-empty string", value)
    return value


def any_text(name: str, value: Any) -> str:
    """A string, perhaps empty (an SQL condition, a Ray address: their own code judges the content)."""
    if not isinstance(value, str):
        refuse(name, "a string", value)
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        refuse(name, "True or False", value)
    return value


def file_path(name: str, value: Any) -> str | os.PathLike:
    """A file or folder: a non-empty str or an os.PathLike."""
    if not (isinstance(value, str) and value or isinstance(value, os.PathLike)):
        refuse(name, "a path (a non-empty str or an os.PathLike)", value)
    return value


def run_ids(name: str, value: Any) -> list[int]:
    """Training run ids: a list of whole numbers, or a string of them joined by commas ("3,4,5")."""
    wanted = "run ids: a list of whole numbers or a string like '3,4'"
    parts = value.split(",") if isinstance(value, str) else value
    if isinstance(parts, str | bytes) or not isinstance(parts, Sequence) or not parts:
        refuse(name, wanted, value)
    try:
        return [whole(1)(name, int(p) if isinstance(p, str) else p) for p in parts]
    except ValueError:
        refuse(name, wanted, value)


def names_or_paths(name: str, value: Any) -> list[str]:
    """One name or path, or a non-empty list of them."""
    items = [value] if isinstance(value, str | os.PathLike) else value
    if not isinstance(items, Sequence) or not items:
        refuse(name, "a name or path, or a list of them", value)
    return [name_or_path(name, item) for item in items]


def name_or_path(name: str, value: Any) -> str:
    """A name (model alias, HF id, template) or a path, as the string the library looks up."""
    spelled = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(spelled, str) or not spelled:
        refuse(name, "a name or a path (a non-empty str or an os.PathLike)", value)
    return spelled


def embedder_ref(name: str, value: Any) -> str:
    """An embedder already in the catalog, by name, path or id."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        return str(whole()(name, value))
    return name_or_path(name, value)


def device(name: str, value: Any) -> str:
    if not isinstance(value, str) or not DEVICE.fullmatch(value):
        refuse(name, "auto, cpu, cuda or cuda:N", value)
    return value


def columns(name: str, value: Any) -> dict[str, str]:
    """{shape field: your column}: non-empty strings both sides (ingest judges the names)."""
    if not isinstance(value, Mapping) or not all(
        isinstance(part, str) and part for pair in value.items() for part in pair
    ):
        refuse(name, "a dict of field names, {shape field: your column}", value)
    return dict(value)


def source(name: str, value: Any) -> Any:
    """What ingest reads: a path (a str must not be empty: it would mean the working directory),
    else rows in memory, whose kind ingest checks."""
    return file_path(name, value) if isinstance(value, str) else value


def optional(check: Check) -> Check:
    """`check`, with None let through (the verb's default)."""
    return lambda name, value: None if value is None else check(name, value)


def at_most_one(**given: Any) -> None:
    """Refuse two arguments that exclude each other, both given."""
    named = [name for name, value in given.items() if value is not None]
    if len(named) > 1:
        raise ArgumentError("give at most one of {0} and {1}", *named)


def checked(**checks: Check) -> Callable[[Callable], Callable]:
    """Run `checks` (one per parameter, or the decoration fails) on every call of the decorated
    verb, defaults included, and call it with the values they return."""

    def decorate(verb: Callable) -> Callable:
        signature = inspect.signature(verb)
        parameters = [p for p in signature.parameters if p != "self"]
        if set(parameters) != set(checks):
            raise TypeError(f"{verb.__qualname__}: checks for {sorted(checks)}, parameters {parameters}")

        @functools.wraps(verb)
        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for name, check in checks.items():
                bound.arguments[name] = check(name, bound.arguments[name])
            return verb(*bound.args, **bound.kwargs)

        call.checks = checks
        return call

    return decorate
