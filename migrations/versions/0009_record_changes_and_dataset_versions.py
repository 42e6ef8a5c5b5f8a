"""Record every change of membership, so datasets have versions and samples can leave.

- catalog_change: one row per ingest, replace, removal or purge (what was asked, when; whether a
  purge's vector deletion in LanceDB is still to finish).
- dataset_version: per dataset, one row per change that touched it: rows in, rows out, members after.
- membership_left: a membership row that ended, with the change that ended it (the history; the
  `membership` table keeps only current rows, so everything that reads it sees current samples).
- purged_sample: samples whose text, vectors, losses and links were deleted for good.
- selection.pool_change_id / pool_versions: the last change and the dataset versions a selection
  drew from, so `selections` can tell that its pool has changed since.

Catalogs from before this revision get one 'ingest' change per ingest batch (change_id =
ingest_id, at the batch's finish time), one version per (dataset, batch) with the rows it
brought in, and each selection the last change made before it (its versions are unknown: NULL).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_change",
        sa.Column("change_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String, nullable=False),  # ingest | replace | remove | purge
        sa.Column("ingest_id", sa.Integer),  # the batch of an ingest or replace
        sa.Column("detail", sa.String, nullable=False),  # what was asked, in the user's words
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("vectors_done", sa.Boolean, nullable=False),  # false: a purge's LanceDB step is pending
    )
    op.create_table(
        "dataset_version",
        sa.Column("dataset", sa.String, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("change_id", sa.Integer, nullable=False),
        sa.Column("rows_in", sa.Integer, nullable=False),
        sa.Column("rows_out", sa.Integer, nullable=False),
        sa.Column("members", sa.Integer, nullable=False),
    )
    op.create_table(
        "membership_left",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("dataset", sa.String, primary_key=True),
        sa.Column("change_id", sa.Integer, primary_key=True, autoincrement=False),  # the change that ended it
        sa.Column("ingest_id", sa.Integer, nullable=False),  # the batch that began it
        sa.Column("source_row", sa.Integer, nullable=False),
    )
    op.create_table(
        "purged_sample",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("change_id", sa.Integer, primary_key=True, autoincrement=False),
    )
    op.add_column("selection", sa.Column("pool_change_id", sa.Integer))
    op.add_column("selection", sa.Column("pool_versions", sa.String))  # JSON {dataset: version}

    op.execute(
        """
        INSERT INTO catalog_change (change_id, kind, ingest_id, detail, created_at, vectors_done)
        SELECT ingest_id, 'ingest', ingest_id, path, finished_at, true FROM ingest_batch
        """
    )
    op.execute(
        """
        INSERT INTO dataset_version (dataset, version, change_id, rows_in, rows_out, members)
        SELECT dataset, row_number() OVER (PARTITION BY dataset ORDER BY ingest_id), ingest_id, rows_in, 0,
               sum(rows_in) OVER (PARTITION BY dataset ORDER BY ingest_id)
        FROM (SELECT b.dataset, b.ingest_id,
                     (SELECT count(*) FROM membership m
                      WHERE m.ingest_id = b.ingest_id AND m.dataset = b.dataset) AS rows_in
              FROM ingest_batch b)
        """
    )
    op.execute(
        """
        UPDATE selection SET pool_change_id = (
            SELECT max(change_id) FROM catalog_change c WHERE c.created_at <= selection.created_at)
        """
    )
    op.execute(
        """
        CREATE VIEW dataset_versions AS
        SELECT v.dataset, v.version, c.kind, v.rows_in, v.rows_out, v.members, c.detail, c.created_at,
               v.change_id, c.ingest_id
        FROM dataset_version v JOIN catalog_change c USING (change_id)
        """
    )
    op.execute(
        """
        CREATE VIEW departures AS
        SELECT l.sample_id, l.dataset, c.kind, c.detail, c.created_at AS left_at, l.change_id,
               CASE WHEN EXISTS (SELECT 1 FROM membership m WHERE m.sample_id = l.sample_id) THEN 'current'
                    WHEN EXISTS (SELECT 1 FROM sample s WHERE s.sample_id = l.sample_id) THEN 'retired'
                    ELSE 'purged' END AS state
        FROM membership_left l JOIN catalog_change c USING (change_id)
        """
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
