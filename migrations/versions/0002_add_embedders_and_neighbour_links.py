"""Add embedders, nearest-neighbour links per embedder, and the runs that computed them.

Vectors themselves live in LanceDB (vectors/embedder_<id>), keyed by sample_id.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedder",
        sa.Column("embedder_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("pooling", sa.String, nullable=False),
        sa.Column("normalized", sa.Boolean, nullable=False),
        sa.Column("max_seq_length", sa.Integer),
        sa.Column("fingerprint", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("fingerprint", "pooling"),
    )
    op.create_table(
        "neighbour_run",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("embedder_id", sa.Integer, nullable=False),
        sa.Column("method", sa.String, nullable=False),
        sa.Column("mode", sa.String, nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("new_samples", sa.Integer, nullable=False),
        sa.Column("links_changed", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "neighbour_link",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("embedder_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("neighbour_id", sa.BigInteger),
        sa.Column("similarity", sa.Double),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
    )
    op.execute(
        """
        CREATE VIEW neighbours AS
        SELECT l.sample_id, e.name AS embedder, l.neighbour_id, l.similarity, l.computed_at, l.run_id,
               l.embedder_id
        FROM neighbour_link l JOIN embedder e USING (embedder_id)
        """
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
