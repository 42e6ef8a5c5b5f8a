"""Bring a catalog's schema to the newest alembic revision shipped with this code."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import sqlalchemy as sa

import migrations.duckdb_impl  # noqa: F401  (registers the DuckDB dialect with alembic)
from catalog.errors import UserError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


@cache
def _config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@cache
def head_revision() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


@cache
def _known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    return frozenset(script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions())


def current_revision(conn: sa.Connection) -> str | None:
    """The revision `conn`'s catalog is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def objects(conn: sa.Connection) -> list[str]:
    """Names of the tables and views in `conn`'s database (empty for a new file)."""
    rows = conn.exec_driver_sql(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database() "
        "ORDER BY 1"
    )
    return [row[0] for row in rows]


def check_known(revision: str | None, where: Path) -> None:
    """Refuse a catalog written by a newer version of this tool."""
    if revision is not None and revision not in _known_revisions():
        raise UserError(
            f"catalog {where} is at schema revision {revision}, which this version does not know "
            f"(newest known: {head_revision()}); upgrade miwv-catalog to open it"
        )


def upgrade(conn: sa.Connection, target: str = "head") -> None:
    """Apply every migration up to `target` inside `conn`'s transaction."""
    from alembic import command

    config = _config()
    config.attributes["connection"] = conn
    try:
        command.upgrade(config, target)
    finally:
        config.attributes.pop("connection", None)
