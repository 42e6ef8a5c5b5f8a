"""Record which processes ran a score run: how many, and per worker its node, device, passes
and tokens (a run may be spread over the GPUs of several machines by Ray).

Runs recorded before this revision have workers NULL and no worker rows.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("score_run", sa.Column("workers", sa.Integer))  # processes asked for; 1 in-process
    op.create_table(
        "score_run_worker",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("worker", sa.Integer, primary_key=True, autoincrement=False),  # a replacement gets a new number
        sa.Column("node_id", sa.String, nullable=False),  # Ray node id, or the host name in-process
        sa.Column("device", sa.String, nullable=False),
        sa.Column("passes", sa.Integer, nullable=False),
        sa.Column("tokens_run", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
