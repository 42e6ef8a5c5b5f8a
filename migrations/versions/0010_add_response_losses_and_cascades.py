"""Add the response-alone loss (for IFD and Superfiltering) and what a screened score run scored.

- response_loss: the mean token NLL of the response with no prompt (one start token before it),
  keyed per (sample, scorer) like the zero-shot loss; it does not depend on neighbours.
- ifd_scores view: zero-shot loss, response loss, IFD = L(y|x) / L(y) (Cherry LLM) and
  ifd_ppl = exp(L(y|x) - L(y)) (Superfiltering's perplexity ratio), current samples only.
- score_run: the metrics it computed, and its pool when it was not the catalog or a dataset:
  a recorded selection (a screen) or a condition, plus its calibration sample (percent, seed).
- score_calibration: the samples of a run's calibration sample (scored whatever the screen kept).
- selection.cascade: JSON of the screen a selection's scores came through and the estimated
  share of the target's top K that the screen kept.

Runs from before this revision computed miwv only; their pool was the catalog or a dataset.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "response_loss",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("scorer_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("status", sa.String, nullable=False),  # ok | too_long
        sa.Column("sum_nll", sa.Double),
        sa.Column("n_response_tokens", sa.Integer),
        sa.Column("loss", sa.Double),  # mean token NLL of the response alone; NULL unless status = 'ok'
        sa.Column("n_tokens", sa.Integer),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "score_calibration",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
    )
    op.add_column("score_run", sa.Column("metrics", sa.String))  # comma-separated; NULL before 0010: miwv
    op.add_column("score_run", sa.Column("pool_selection_id", sa.Integer))
    op.add_column("score_run", sa.Column("pool_where", sa.String))
    op.add_column("score_run", sa.Column("calibrate_percent", sa.Double))
    op.add_column("score_run", sa.Column("calibrate_seed", sa.Integer))
    op.add_column("selection", sa.Column("cascade", sa.String))  # JSON; NULL: no screen
    op.execute(
        """
        CREATE VIEW ifd_scores AS
        SELECT z.sample_id, sc.model, z.scorer_id, sc.template, sc.max_length,
               z.loss AS zero_shot_loss, r.loss AS response_loss,
               z.loss / r.loss AS ifd, exp(z.loss - r.loss) AS ifd_ppl,
               z.n_response_tokens,
               CASE WHEN z.status <> 'ok' THEN z.status
                    WHEN r.status <> 'ok' THEN r.status
                    WHEN r.loss = 0 THEN 'zero_response_loss'
                    ELSE 'ok' END AS status
        FROM zero_shot_loss z
        JOIN response_loss r USING (sample_id, scorer_id)
        JOIN scorer sc USING (scorer_id)
        WHERE z.sample_id IN (SELECT sample_id FROM membership)
        """
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
