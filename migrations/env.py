"""Alembic env: runs on the connection the catalog hands over (config.attributes["connection"]),
or, from the alembic command line, on `-x catalog=DIR`."""

from alembic import context

import migrations.duckdb_impl  # noqa: F401  (registers the DuckDB dialect with alembic)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from pathlib import Path

    import sqlalchemy as sa

    catalog_dir = context.get_x_argument(as_dictionary=True).get("catalog", "miwv-catalog")
    engine = sa.create_engine(f"duckdb:///{Path(catalog_dir) / 'catalog.duckdb'}", poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        _run(conn)
