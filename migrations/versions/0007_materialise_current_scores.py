"""Materialise the current scores: the score_current table, and miwv_scores read from it.

The miwv_scores view joined every neighbour link to both losses on each read (0.3-0.9 s at
1M samples, paid by every web page and `select`). score_current holds that join's result, one
row per sample x scorer x embedder, kept up to date by the writers of links and losses in their
own transactions (catalog/current_scores.py). It is filled here from the old view, sorted by
sample_id (so a writer's delete by sample id skips row groups through their zonemaps), and the
view keeps its columns, their order and its rows.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COLUMNS = """sample_id, scorer_id, embedder_id, neighbour_id, similarity, zero_shot_loss, one_shot_loss, miwv,
              n_response_tokens, status, example_truncated"""


def upgrade() -> None:
    op.create_table(
        "score_current",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("scorer_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("embedder_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("neighbour_id", sa.BigInteger),
        sa.Column("similarity", sa.Double),
        sa.Column("zero_shot_loss", sa.Double),
        sa.Column("one_shot_loss", sa.Double),
        sa.Column("miwv", sa.Double),  # one_shot_loss - zero_shot_loss
        sa.Column("n_response_tokens", sa.Integer),
        sa.Column("status", sa.String, nullable=False),  # ok | too_long | too_long_one_shot | no_neighbour
        sa.Column("example_truncated", sa.Boolean, nullable=False),
    )
    op.execute(f"INSERT INTO score_current ({_COLUMNS}) SELECT {_COLUMNS} FROM miwv_scores ORDER BY sample_id")
    op.execute(
        """
        CREATE OR REPLACE VIEW miwv_scores AS
        SELECT c.sample_id, sc.model, e.name AS embedder, c.neighbour_id, c.similarity, c.zero_shot_loss,
               c.one_shot_loss, c.miwv, c.n_response_tokens, c.status, c.example_truncated, c.scorer_id,
               c.embedder_id, sc.template, sc.max_length
        FROM score_current c
        JOIN embedder e USING (embedder_id)
        JOIN scorer sc USING (scorer_id)
        """
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
