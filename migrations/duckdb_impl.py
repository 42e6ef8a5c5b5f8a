"""Alembic has no DuckDB dialect; registering this impl (on import) gives it one."""

from alembic.ddl.impl import DefaultImpl


class DuckDBImpl(DefaultImpl):
    """DuckDB runs DDL inside transactions."""

    __dialect__ = "duckdb"
    transactional_ddl = True
