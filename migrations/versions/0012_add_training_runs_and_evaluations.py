"""Training runs on selections, and what evaluates them: test prompts, generations, reference
losses and pairwise judgements, all rows like scores and selections (issue 19).

- train_run: one fine-tuning of a base model on a recorded selection's samples, rendered with a
  template (the scoring prompt, byte for byte): method (lora | full), hyperparameters (JSON),
  seed, device, where its adapter or model folder is and that folder's fingerprint; finished_at
  NULL while it runs or after it stopped (`train` again resumes it from its last checkpoint).
  A run of method 'base' is the base model itself, untrained (selection_id 0): the baseline.
- train_loss: the loss curve, one row per logging step.
- test_prompt: a prompt of a test set (Vicuna 80, AlpacaEval, a local file, ...), stored once,
  keyed by the hash of the set's name, instruction and input; `prompt` is the instruction and
  `input` the Alpaca input ('' when none), kept apart so a template renders them as its trainer
  does; `reference` is an answer when the set has one.
- generation: a run's answer to a test prompt under generation settings (`settings`: JSON of
  greedy or seeded sampling and max new tokens), so a rerun generates only what is missing.
- reference_loss: the mean token NLL of a reference answer under a run (a judge-free metric).
- judgement: a judge's verdict on two runs' answers to one prompt, in one order (both orders are
  asked: position bias), with the hash of the judge prompt's text.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "train_run",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("selection_id", sa.Integer, nullable=False),
        sa.Column("model", sa.String, nullable=False),  # the alias, id or path asked for
        sa.Column("base_fingerprint", sa.String, nullable=False),
        sa.Column("template", sa.String, nullable=False),
        sa.Column("template_hash", sa.String, nullable=False),
        sa.Column("method", sa.String, nullable=False),  # lora | full | base
        sa.Column("hyperparameters", sa.String, nullable=False),  # JSON
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("device", sa.String, nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("output_path", sa.String, nullable=False),
        sa.Column("output_fingerprint", sa.String),  # NULL until finished
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
    )
    op.create_table(
        "train_loss",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.Double),
        sa.Column("loss", sa.Double, nullable=False),
        sa.Column("learning_rate", sa.Double),
    )
    op.create_table(
        "test_prompt",
        sa.Column("prompt_id", sa.BigInteger, primary_key=True, autoincrement=False),  # hash of set + text
        sa.Column("testset", sa.String, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("prompt", sa.String, nullable=False),  # the instruction
        sa.Column("input", sa.String, nullable=False, server_default=""),
        sa.Column("reference", sa.String),
        sa.Column("source", sa.String, nullable=False),  # the file or Hub dataset it came from
    )
    op.create_table(
        "generation",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("prompt_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("settings", sa.String, primary_key=True),  # JSON: greedy | sampling + seed, max_new_tokens
        sa.Column("text", sa.String, nullable=False),
        sa.Column("n_tokens", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "reference_loss",
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("prompt_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("loss", sa.Double),  # NULL: too long
        sa.Column("n_tokens", sa.Integer),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "judgement",
        sa.Column("run_a", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("run_b", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("prompt_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("a_first", sa.Boolean, primary_key=True),  # the order the judge saw the answers in
        sa.Column("judge", sa.String, primary_key=True),
        sa.Column("settings", sa.String, nullable=False),  # the generations' settings judged
        sa.Column("judge_prompt_hash", sa.String, nullable=False),
        sa.Column("verdict", sa.String, nullable=False),  # a | b | tie (which run won, whatever the order)
        sa.Column("raw", sa.String, nullable=False),  # the judge's answer
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
