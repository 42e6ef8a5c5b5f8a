"""Add recorded selections: what was asked (model, strategy, K, pool, the SQL) and the ranked
sample ids, so a subset can be reproduced and diffed later.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "selection",
        sa.Column("selection_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("model", sa.String),  # NULL for the random strategy
        sa.Column("scorer_id", sa.Integer),
        sa.Column("embedder", sa.String),
        sa.Column("strategy", sa.String, nullable=False),
        sa.Column("top_k", sa.Integer),
        sa.Column("top_percent", sa.Double),
        sa.Column("seed", sa.Integer),
        sa.Column("dataset", sa.String),
        sa.Column("pool_where", sa.String),
        sa.Column("pool_size", sa.Integer, nullable=False),
        sa.Column("eligible", sa.Integer, nullable=False),
        sa.Column("selected", sa.Integer, nullable=False),
        sa.Column("sql", sa.String, nullable=False),
        sa.Column("output", sa.String),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "selection_member",
        sa.Column("selection_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("score", sa.Double),
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
