"""Neighbour scopes, lists of K nearest examples, and embedders that prefix their texts.

- neighbour_link, score_current: `scope_dataset` joins their keys. '' is the catalog-wide scope
  (a sample's example is its nearest other sample in the catalog, as before); a dataset's name is
  that dataset's scope (its nearest other member of that dataset: the paper's setting). A sample in
  two datasets has one link per dataset scope. The tables are rebuilt (DuckDB cannot change a
  primary key); every existing row is catalog-wide.
- neighbour_run: the scope it linked ('' catalog-wide).
- score_run: the scope its one-shot passes used (`scope_dataset`, as in the links; NULL before:
  catalog-wide) and how many nearest examples per sample (`examples`; NULL before: 1).
- example_list: a sample's K nearest examples in a scope, rank 1 first, as `score --examples K`
  found them; with the one-shot losses (keyed per sample and example) they give MIWV@k.
- embedder.text_prefix: what the embedder puts before each text (E5's "query: "); NULL: nothing.
- views: `neighbours` and `miwv_scores` gain `scope` ('catalog' | 'dataset') and `scope_dataset`
  (the dataset, NULL when catalog-wide). `miwv_examples`: MIWV with each listed example (rank k), for
  lists that are still current: the sample and the example are current members of the scope, and
  the list's rank 1 is the sample's current link.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_LINK_COLUMNS = "sample_id, embedder_id, neighbour_id, similarity, run_id, computed_at"
_CURRENT_COLUMNS = """sample_id, scorer_id, embedder_id, neighbour_id, similarity, zero_shot_loss, one_shot_loss,
                      miwv, n_response_tokens, status, example_truncated"""
# The user-facing pair for a stored scope_dataset `s`.
_SCOPE = "CASE WHEN {s} = '' THEN 'catalog' ELSE 'dataset' END AS scope, nullif({s}, '') AS scope_dataset"


def _scope_column() -> sa.Column:
    return sa.Column("scope_dataset", sa.String, primary_key=True, nullable=False, server_default="")


def upgrade() -> None:
    op.execute("DROP VIEW neighbours")
    op.execute("DROP VIEW miwv_scores")

    op.rename_table("neighbour_link", "neighbour_link_0010")
    op.create_table(
        "neighbour_link",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("embedder_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("neighbour_id", sa.BigInteger),
        sa.Column("similarity", sa.Double),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
        _scope_column(),
    )
    op.execute(
        f"INSERT INTO neighbour_link ({_LINK_COLUMNS}, scope_dataset) "
        f"SELECT {_LINK_COLUMNS}, '' FROM neighbour_link_0010 ORDER BY sample_id"
    )
    op.drop_table("neighbour_link_0010")

    op.rename_table("score_current", "score_current_0010")
    op.create_table(
        "score_current",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("scorer_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("embedder_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("neighbour_id", sa.BigInteger),
        sa.Column("similarity", sa.Double),
        sa.Column("zero_shot_loss", sa.Double),
        sa.Column("one_shot_loss", sa.Double),
        sa.Column("miwv", sa.Double),
        sa.Column("n_response_tokens", sa.Integer),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("example_truncated", sa.Boolean, nullable=False),
        _scope_column(),
    )
    op.execute(
        f"INSERT INTO score_current ({_CURRENT_COLUMNS}, scope_dataset) "
        f"SELECT {_CURRENT_COLUMNS}, '' FROM score_current_0010 ORDER BY sample_id"
    )
    op.drop_table("score_current_0010")

    op.add_column("neighbour_run", sa.Column("scope_dataset", sa.String, nullable=False, server_default=""))
    op.add_column("score_run", sa.Column("scope_dataset", sa.String))  # NULL before 0011: catalog-wide ('')
    op.add_column("score_run", sa.Column("examples", sa.Integer))  # nearest examples per sample; NULL: 1
    op.add_column("embedder", sa.Column("text_prefix", sa.String))  # NULL: texts are embedded as they are
    op.create_table(
        "example_list",
        sa.Column("sample_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("embedder_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("scope_dataset", sa.String, primary_key=True),
        sa.Column("rank", sa.Integer, primary_key=True, autoincrement=False),  # 1: the nearest
        sa.Column("neighbour_id", sa.BigInteger, nullable=False),
        sa.Column("similarity", sa.Double, nullable=False),
        sa.Column("computed_at", sa.DateTime, nullable=False),
    )

    op.execute(
        f"""
        CREATE VIEW neighbours AS
        SELECT l.sample_id, e.name AS embedder, l.neighbour_id, l.similarity, l.computed_at, l.run_id,
               l.embedder_id, {_SCOPE.format(s="l.scope_dataset")}
        FROM neighbour_link l JOIN embedder e USING (embedder_id)
        """
    )
    op.execute(
        f"""
        CREATE VIEW miwv_scores AS
        SELECT c.sample_id, sc.model, e.name AS embedder, c.neighbour_id, c.similarity, c.zero_shot_loss,
               c.one_shot_loss, c.miwv, c.n_response_tokens, c.status, c.example_truncated, c.scorer_id,
               c.embedder_id, sc.template, sc.max_length, {_SCOPE.format(s="c.scope_dataset")}
        FROM score_current c
        JOIN embedder e USING (embedder_id)
        JOIN scorer sc USING (scorer_id)
        """
    )

    op.execute(
        f"""
        CREATE VIEW miwv_examples AS
        SELECT x.sample_id, sc.model, e.name AS embedder, {_SCOPE.format(s="x.scope_dataset")}, x.rank,
               x.neighbour_id, x.similarity, z.loss AS zero_shot_loss, o.loss AS one_shot_loss,
               o.loss - z.loss AS miwv,
               CASE WHEN z.status <> 'ok' THEN z.status ELSE o.status END AS status,
               o.example_truncated, z.scorer_id, x.embedder_id, x.computed_at
        FROM example_list x
        JOIN example_list first
          ON first.sample_id = x.sample_id AND first.embedder_id = x.embedder_id
         AND first.scope_dataset = x.scope_dataset AND first.rank = 1
        JOIN neighbour_link l
          ON l.sample_id = x.sample_id AND l.embedder_id = x.embedder_id AND l.scope_dataset = x.scope_dataset
         AND l.neighbour_id = first.neighbour_id
        JOIN embedder e ON e.embedder_id = x.embedder_id
        JOIN zero_shot_loss z ON z.sample_id = x.sample_id
        JOIN scorer sc ON sc.scorer_id = z.scorer_id
        JOIN one_shot_loss o
          ON o.sample_id = x.sample_id AND o.scorer_id = z.scorer_id AND o.neighbour_id = x.neighbour_id
        WHERE x.neighbour_id IN (SELECT m.sample_id FROM membership m
                                 WHERE x.scope_dataset = '' OR m.dataset = x.scope_dataset)
        """
    )


def downgrade() -> None:
    raise NotImplementedError("the catalog only moves forward")
