"""Record the text of a scorer's template, not only its hash.

The sample page rebuilds the inputs a scorer saw. A .jinja template was found again by its
file name in the server's working directory: a template scored by full path was missing there,
and a different file of that name was used instead. The scorer keeps the text it rendered with.

Scorers from before this revision have no text (NULL); scoring again with the same template
fills it in.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scorer", sa.Column("template_text", sa.String))  # hashes to template_hash; NULL before 0008


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
