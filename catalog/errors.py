"""Errors a user can cause and fix. The CLI prints them as one line and exits non-zero;
anything else is a bug and keeps its traceback."""

from __future__ import annotations

from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix: a bad file, an unknown model, a missing catalog."""

    exit_code = 1


class ArgumentError(UserError):
    """An argument the caller gave (or left out) that cannot be used.

    The message names arguments as the Python API spells them ("top_k"); `arguments` lists
    them so a front end can word the same message in its own terms (the CLI's "--top-k").

    Args:
        template: the message, with {0}, {1}, ... where the argument names go.
        arguments: the API names of the arguments at fault.
        detail: what went wrong underneath (e.g. the database's message), appended as is.
    """

    def __init__(self, template: str, *arguments: str, detail: str | None = None) -> None:
        self.template, self.arguments, self.detail = template, arguments, detail
        super().__init__(self.worded(lambda name: name))

    def worded(self, name_of: Callable[[str], str]) -> str:
        """The message with each argument named by `name_of(api_name)`."""
        message = self.template.format(*map(name_of, self.arguments))
        return f"{message} ({self.detail})" if self.detail else message


class InvalidInput(UserError):
    """An input file (or a record in it) that cannot be ingested."""

    exit_code = 2


class CatalogBusy(UserError):
    """Another process holds the catalog: its DuckDB file (as a reader or a writer) or its job lock.

    Attributes:
        pid: the holder's process id, when known.
        role: "reader" or "writer" (of catalog.duckdb), or "job" (a long job holds job.lock).
        command: the holder's command line (or job name), when known.
    """

    exit_code = 3

    def __init__(self, message: str, pid: int | None = None, role: str | None = None, command: str | None = None):
        super().__init__(message)
        self.pid = pid
        self.role = role
        self.command = command


class StorageError(UserError):
    """The operating system or a storage engine refused: disk full, permission denied, a damaged file."""

    exit_code = 4
