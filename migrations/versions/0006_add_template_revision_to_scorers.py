"""Add the template's revision and hash to a scorer's identity.

The prompt a scorer renders is part of what its losses mean. Revision 1 is the rendering
before the trainer-exact templates (one Alpaca form, no EOS after the example); its rows keep
revision 1 and no hash, so a newer rendering registers a new scorer instead of reusing them.

DuckDB cannot drop a unique constraint, so the table is rebuilt (new columns last, every row
copied) with the constraint widened to the new key.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scorer_0006",
        sa.Column("scorer_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("model", sa.String, nullable=False),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("fingerprint", sa.String, nullable=False),
        sa.Column("template", sa.String, nullable=False),
        sa.Column("max_length", sa.Integer, nullable=False),
        sa.Column("dtype", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("template_revision", sa.Integer, nullable=False),  # of the rendering code; 1 = before 0006
        sa.Column("template_hash", sa.String),  # SHA-256 of the template's text; NULL for revision 1
        sa.UniqueConstraint("fingerprint", "template", "template_revision", "template_hash", "max_length", "dtype"),
    )
    op.execute(
        """INSERT INTO scorer_0006
           SELECT scorer_id, model, source, fingerprint, template, max_length, dtype, created_at, 1, NULL FROM scorer"""
    )
    op.drop_table("scorer")
    op.rename_table("scorer_0006", "scorer")


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
