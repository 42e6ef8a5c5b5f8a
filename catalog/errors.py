"""Errors a user can cause and fix. The CLI prints them as one line and exits non-zero;
anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Something the user can fix: a bad file, an unknown model, a missing catalog."""

    exit_code = 1


class InvalidInput(UserError):
    """An input file (or a record in it) that cannot be ingested."""

    exit_code = 2


class CatalogBusy(UserError):
    """Another process holds the catalog for writing."""

    exit_code = 3
