"""What the catalog holds: current samples per dataset (and how many left), ingest batches,
embeddings, neighbour links, scores.

Every count is of current samples (those in some dataset): a retired sample keeps its text,
vector and losses, but no dataset, link or score counts it; `retired` and `purged` say how
many samples left the catalog, and each dataset's `version` how often its members changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from catalog import db
from catalog.embed import embedders
from catalog.store import Catalog


def catalog_status(catalog: Catalog) -> dict[str, Any]:
    """A JSON-able summary of the catalog."""
    tables = {e.embedder_id: e.vectors(catalog) for e in embedders(catalog)}
    with catalog.read() as conn:
        ids = {embedder_id: table.ids() for embedder_id, table in tables.items()}
        linked = db.records(conn, EMBEDDERS_SQL)
        embedded = [_current_vectors(conn, ids[row["embedder_id"]], row["scope"]) for row in linked]
        status = {
            "catalog": str(catalog.path.resolve()),
            "samples": db.execute(conn, "SELECT count(DISTINCT sample_id) FROM membership")[0][0],
            "retired": db.execute(conn, RETIRED_SQL)[0][0],
            "purged": db.execute(conn, PURGED_SQL)[0][0],
            "datasets": db.records(conn, DATASETS_SQL),
            "ingests": db.records(conn, INGESTS_SQL),
            "embedders": [
                {
                    **row,
                    "embedded": vectors,
                    "not_linked": max(0, vectors - row["linked"] - row["without_neighbour"]),
                    "vectors_missing": max(0, row["linked"] + row["without_neighbour"] - vectors),
                }
                for row, vectors in zip(linked, embedded, strict=True)
            ],
            "scores": db.records(conn, SCORES_SQL),
        }
        purges_pending = db.execute(conn, "SELECT count(*) FROM catalog_change WHERE NOT vectors_done")[0][0]
    status["advice"] = _advice(status, tables, purges_pending)
    return status


def _current_vectors(conn, ids: np.ndarray, scope: str) -> int:
    """How many current samples of `scope` ("catalog" or "dataset:NAME", as EMBEDDERS_SQL says) have one
    of the vectors `ids` (a retired sample keeps its vector)."""
    vectors = db.id_table(np.unique(ids))
    dataset = scope.removeprefix("dataset:") if scope != "catalog" else None
    with db.registered(conn, "_vectors", vectors):
        return db.execute(
            conn,
            """SELECT count(*) FROM _vectors
               WHERE sample_id IN (SELECT sample_id FROM membership WHERE $dataset IS NULL OR dataset = $dataset)""",
            {"dataset": dataset},
        )[0][0]


def _advice(status: dict[str, Any], tables: dict, purges_pending: int) -> list[str]:
    """What to run next, one line per state that needs a command."""
    advice = []
    for row in status["embedders"]:
        if row["vectors_missing"]:
            advice.append(
                f"embedder {row['name']}: {row['vectors_missing']} linked samples have no vector in "
                f"{tables[row['embedder_id']].folder}: run `python cli.py embed` to compute them again"
            )
        if row["not_linked"]:
            scoped = "" if row["scope"] == "catalog" else f" in {row['scope']}"
            command = "embed" if row["scope"] == "catalog" else "neighbours --scope dataset"
            advice.append(
                f"embedder {row['name']}: {row['not_linked']} samples have a vector but no neighbour link{scoped} "
                f"(new, or their neighbour left): run `python cli.py {command}` to link them, then `score`"
            )
    if purges_pending:
        advice.append(
            f"{purges_pending} purges have not deleted their vectors from LanceDB yet: the next write command "
            "(e.g. `python cli.py embed`) finishes them"
        )
    return advice


# The statements behind the summary (public: the web overview shows them next to their tables).
# version: the dataset's latest version (each ingest, replace or removal that changed it makes one).
DATASETS_SQL = """
    SELECT dataset, count(*) AS samples, count(*) FILTER (WHERE exclusive) AS only_here,
           (SELECT max(v.version) FROM dataset_version v WHERE v.dataset = m.dataset) AS version
    FROM (SELECT dataset, count(*) OVER (PARTITION BY sample_id) = 1 AS exclusive FROM membership) m
    GROUP BY dataset ORDER BY dataset
"""

# Samples in no dataset any more: their rows stay (a later ingest of the same content brings them back).
RETIRED_SQL = "SELECT count(*) FROM sample ANTI JOIN membership USING (sample_id)"

# Samples deleted for good (only their ids remain), unless ingested again since.
PURGED_SQL = "SELECT count(DISTINCT sample_id) FROM purged_sample ANTI JOIN sample USING (sample_id)"

INGESTS_SQL = """
    SELECT ingest_id, dataset, path, parse_filename(path) AS file, record_shape,
           rows_read, rows_new, rows_duplicate, rows_rejected,
           strftime(finished_at, '%Y-%m-%d %H:%M:%S') AS finished_at
    FROM ingest_batch ORDER BY ingest_id
"""

# A stored scope_dataset `{s}` as status shows it: "catalog", or "dataset:NAME".
_SCOPE = "CASE WHEN {s} = '' THEN 'catalog' ELSE 'dataset:' || {s} END"

# Per embedder and scope it has links in: linked samples; `embedded` and `not_linked` are added from its
# LanceDB table (for the catalog scope).
EMBEDDERS_SQL = f"""
    WITH linked AS (
        SELECT e.embedder_id, e.name, e.pooling, e.dimension, coalesce(l.scope_dataset, '') AS scope_dataset,
               count(l.neighbour_id) AS linked, count(l.sample_id) - count(l.neighbour_id) AS without_neighbour
        FROM embedder e LEFT JOIN neighbour_link l USING (embedder_id)
        GROUP BY ALL)
    SELECT k.embedder_id, k.name, k.pooling, k.dimension, {_SCOPE.format(s="k.scope_dataset")} AS scope,
           k.linked, k.without_neighbour,
           (SELECT count(*) FROM neighbour_link c
            WHERE c.embedder_id = k.embedder_id AND c.scope_dataset = k.scope_dataset
              AND c.run_id = (SELECT max(run_id) FROM neighbour_run r
                              WHERE r.embedder_id = k.embedder_id AND r.scope_dataset = k.scope_dataset)
           ) AS changed_in_last_run
    FROM linked k ORDER BY k.embedder_id, k.scope_dataset
"""

# Per scorer, embedder and scope it ran with, over linked samples: MIWV defined (scored), never will be
# (unscorable: too long, no neighbour), one-shot only for an earlier neighbour (stale: the
# neighbour changed since), or not scored yet. A sample with a score_current row is scored or
# unscorable by its status; only the others (few, once a pool is scored) are looked up in the losses.
SCORES_SQL = f"""
    WITH pairs AS (SELECT DISTINCT scorer_id, embedder_id, coalesce(scope_dataset, '') AS scope_dataset
                   FROM score_run),
         current AS (
            SELECT scorer_id, embedder_id, scope_dataset,
                   CASE WHEN status = 'ok' THEN 'scored' ELSE 'unscorable' END AS state
            FROM score_current SEMI JOIN pairs USING (scorer_id, embedder_id, scope_dataset)),
         rest AS (
            SELECT p.scorer_id, p.embedder_id, p.scope_dataset,
                   CASE WHEN z.status <> 'ok' OR o.status <> 'ok' OR (z.status = 'ok' AND l.neighbour_id IS NULL)
                             THEN 'unscorable'
                        WHEN o.status = 'ok' THEN 'scored'
                        WHEN EXISTS (SELECT 1 FROM one_shot_loss a
                                     WHERE a.sample_id = l.sample_id AND a.scorer_id = p.scorer_id) THEN 'stale'
                        ELSE 'unscored' END AS state
            FROM pairs p
            JOIN neighbour_link l ON l.embedder_id = p.embedder_id AND l.scope_dataset = p.scope_dataset
            ANTI JOIN score_current c
                   ON c.sample_id = l.sample_id AND c.scorer_id = p.scorer_id AND c.embedder_id = p.embedder_id
                  AND c.scope_dataset = p.scope_dataset
            LEFT JOIN zero_shot_loss z ON z.sample_id = l.sample_id AND z.scorer_id = p.scorer_id
            LEFT JOIN one_shot_loss o
                   ON o.sample_id = l.sample_id AND o.scorer_id = p.scorer_id AND o.neighbour_id = l.neighbour_id),
         states AS (SELECT * FROM current UNION ALL SELECT * FROM rest)
    SELECT s.scorer_id, sc.model, sc.template, sc.template_revision, sc.max_length, e.name AS embedder,
           {_SCOPE.format(s="s.scope_dataset")} AS scope,
           count(*) FILTER (WHERE state = 'scored') AS scored,
           count(*) FILTER (WHERE state = 'unscorable') AS unscorable,
           count(*) FILTER (WHERE state = 'stale') AS stale,
           count(*) FILTER (WHERE state = 'unscored') AS unscored,
           (SELECT max(finished_at) FROM score_run r WHERE r.scorer_id = s.scorer_id) AS last_run
    FROM states s JOIN scorer sc USING (scorer_id) JOIN embedder e USING (embedder_id)
    GROUP BY ALL ORDER BY s.scorer_id, e.name, scope
"""
