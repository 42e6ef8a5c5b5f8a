"""Alembic environment for the catalog schema; one revision per schema change."""
