"""Create the sample store, dataset memberships, ingest batches and rejected rows.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from duckdb_engine.datatypes import Struct

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MESSAGE = Struct({"role": sa.String, "content": sa.String})


def upgrade() -> None:
    op.create_table(
        "ingest_batch",
        sa.Column("ingest_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("dataset", sa.String, nullable=False),
        sa.Column("file_format", sa.String, nullable=False),
        sa.Column("record_shape", sa.String, nullable=False),
        sa.Column("file_sha256", sa.String, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        sa.Column("rows_read", sa.Integer, nullable=False),
        sa.Column("rows_new", sa.Integer, nullable=False),
        sa.Column("rows_duplicate", sa.Integer, nullable=False),
        sa.Column("rows_rejected", sa.Integer, nullable=False),
    )
    op.create_table(
        "sample",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("messages", sa.ARRAY(MESSAGE), nullable=False),
        sa.Column("instruction", sa.String),
        sa.Column("input", sa.String),
        sa.Column("output", sa.String),
        sa.Column("user_text", sa.String, nullable=False),
        sa.Column("n_turns", sa.Integer, nullable=False),
        sa.Column("extra", sa.JSON),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("ingest_id", sa.Integer, nullable=False),
    )
    op.create_table(
        "membership",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("dataset", sa.String, primary_key=True),
        sa.Column("ingest_id", sa.Integer, nullable=False),
        sa.Column("source_row", sa.Integer, nullable=False),
    )
    op.create_table(
        "ingest_reject",
        sa.Column("ingest_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("source_row", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("raw", sa.String),
    )
    op.execute(
        """
        CREATE VIEW samples AS
        SELECT s.sample_id,
               d.datasets,
               s.instruction,
               s.input,
               s.output,
               s.messages,
               s.user_text,
               s.messages[-1].content AS response,
               s.n_turns,
               s.extra,
               s.created_at,
               s.ingest_id
        FROM sample s
        JOIN (SELECT sample_id, list(dataset ORDER BY ingest_id, dataset) AS datasets
              FROM membership GROUP BY sample_id) d USING (sample_id)
        """
    )
    op.execute(
        """
        CREATE VIEW rejects AS
        SELECT r.ingest_id, b.path, b.dataset, r.source_row AS line, r.reason, r.raw
        FROM ingest_reject r JOIN ingest_batch b USING (ingest_id)
        """
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
