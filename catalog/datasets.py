"""Dataset names as a user types them: a typo gets a clear error, not an empty pool."""

from __future__ import annotations

import sqlalchemy as sa

from catalog import db
from catalog.errors import ArgumentError, UserError
from catalog.readers import name_text


def dataset_name(name: str) -> str:
    """`name` if the catalog can store it: not blank, and only UTF-8 (a shell passes other bytes as they are)."""
    if not name.strip():
        raise ArgumentError("{0} must not be empty", "dataset")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError(
            "{0} holds bytes that are not UTF-8; give a name in UTF-8", "dataset", detail=f"got {name_text(name)}"
        ) from None
    return name


def require_dataset(conn: sa.Connection, dataset: str | None) -> None:
    """Raise UserError listing the known datasets when `dataset` (if given) has no samples."""
    if dataset is None:
        return
    known = [row[0] for row in db.execute(conn, "SELECT DISTINCT dataset FROM membership ORDER BY 1")]
    if dataset not in known:
        dataset_name(dataset)
        raise UserError(f"no dataset {dataset!r} in the catalog; datasets: {', '.join(known) or 'none'}")
