"""Add scorers (model x template x max length x dtype), score runs (timing), zero-shot and
one-shot losses, and the miwv_scores view.

Zero-shot losses are keyed by (sample, scorer); one-shot losses by (sample, scorer,
neighbour), so a changed neighbour needs only a new one-shot pass and stale rows never
reach the view.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _loss_columns() -> list[sa.Column]:
    return [
        sa.Column("status", sa.String, nullable=False),  # ok | too_long | too_long_one_shot
        sa.Column("sum_nll", sa.Double),
        sa.Column("n_response_tokens", sa.Integer),
        sa.Column("loss", sa.Double),  # mean token NLL of the response; NULL unless status = 'ok'
        sa.Column("n_tokens", sa.Integer),  # the whole sequence
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "scorer",
        sa.Column("scorer_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("model", sa.String, nullable=False),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("fingerprint", sa.String, nullable=False),
        sa.Column("template", sa.String, nullable=False),
        sa.Column("max_length", sa.Integer, nullable=False),
        sa.Column("dtype", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("fingerprint", "template", "max_length", "dtype"),
    )
    op.create_table(
        "score_run",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("scorer_id", sa.Integer, nullable=False),
        sa.Column("embedder_id", sa.Integer, nullable=False),
        sa.Column("device", sa.String, nullable=False),
        sa.Column("pool", sa.Integer, nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),  # samples that needed a pass
        sa.Column("passes", sa.Integer, nullable=False),
        sa.Column("tokens_run", sa.BigInteger, nullable=False),  # tokens through the model (prefixes reused once)
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),  # NULL: interrupted
    )
    op.create_table(
        "zero_shot_loss",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("scorer_id", sa.Integer, primary_key=True, autoincrement=False),
        *_loss_columns(),
    )
    op.create_table(
        "one_shot_loss",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("scorer_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("neighbour_id", sa.BigInteger, primary_key=True, autoincrement=False),
        *_loss_columns(),
        sa.Column("example_truncated", sa.Boolean, nullable=False),
    )
    op.execute(
        """
        CREATE VIEW miwv_scores AS
        SELECT l.sample_id,
               sc.model,
               e.name AS embedder,
               l.neighbour_id,
               l.similarity,
               z.loss AS zero_shot_loss,
               o.loss AS one_shot_loss,
               o.loss - z.loss AS miwv,
               z.n_response_tokens,
               CASE WHEN z.status <> 'ok' THEN z.status
                    WHEN l.neighbour_id IS NULL THEN 'no_neighbour'
                    ELSE o.status END AS status,
               coalesce(o.example_truncated, false) AS example_truncated,
               sc.scorer_id,
               l.embedder_id,
               sc.template,
               sc.max_length
        FROM neighbour_link l
        JOIN embedder e USING (embedder_id)
        JOIN zero_shot_loss z ON z.sample_id = l.sample_id
        JOIN scorer sc ON sc.scorer_id = z.scorer_id
        LEFT JOIN one_shot_loss o
               ON o.sample_id = l.sample_id AND o.scorer_id = z.scorer_id AND o.neighbour_id = l.neighbour_id
        WHERE o.sample_id IS NOT NULL OR l.neighbour_id IS NULL OR z.status <> 'ok'
        """
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
