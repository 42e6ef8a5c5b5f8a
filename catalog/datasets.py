"""Dataset names as a user types them: a typo gets a clear error, not an empty pool."""

from __future__ import annotations

import sqlalchemy as sa

from catalog import db
from catalog.errors import UserError


def require_dataset(conn: sa.Connection, dataset: str | None) -> None:
    """Raise UserError listing the known datasets when `dataset` (if given) has no samples."""
    if dataset is None:
        return
    known = [row[0] for row in db.execute(conn, "SELECT DISTINCT dataset FROM membership ORDER BY 1")]
    if dataset not in known:
        raise UserError(f"no dataset {dataset!r} in the catalog; datasets: {', '.join(known) or 'none'}")
