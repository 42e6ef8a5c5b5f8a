"""The current scores, materialised: one `score_current` row per sample x scorer x embedder x scope.

A row holds what the `miwv_scores` view shows for the sample's current neighbour link and its
losses. Computing that join over every sample on every read cost seconds at 1M samples, so the
writers that change its inputs (save_links, save_results) recompute the rows of the samples they
touched, inside their own transaction: the table is never behind the links and losses.

A row exists when the sample has a link under the embedder (in the scope) and a zero-shot loss under the scorer,
and either the one-shot loss for its current neighbour, no neighbour, or an unscorable zero-shot
pass. A sample whose link moved to a neighbour it has no one-shot loss for has no row (stale
until re-scored).
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from catalog import db

# Every column of score_current, by name (INSERT ... BY NAME); `rows` narrows which links and losses are read.
_CURRENT_SQL = """
    SELECT l.sample_id, z.scorer_id, l.embedder_id, l.scope_dataset, l.neighbour_id, l.similarity,
           z.loss AS zero_shot_loss, o.loss AS one_shot_loss, o.loss - z.loss AS miwv, z.n_response_tokens,
           CASE WHEN z.status <> 'ok' THEN z.status
                WHEN l.neighbour_id IS NULL THEN 'no_neighbour'
                ELSE o.status END AS status,
           coalesce(o.example_truncated, false) AS example_truncated
    FROM neighbour_link l
    JOIN zero_shot_loss z ON z.sample_id = l.sample_id
    LEFT JOIN one_shot_loss o
           ON o.sample_id = l.sample_id AND o.scorer_id = z.scorer_id AND o.neighbour_id = l.neighbour_id
    WHERE (o.sample_id IS NOT NULL OR l.neighbour_id IS NULL OR z.status <> 'ok') AND {rows}
"""


def refresh(
    conn: sa.Connection,
    sample_ids: np.ndarray,
    *,
    scorer_id: int | None = None,
    embedder_id: int | None = None,
    scope_dataset: str | None = None,
) -> None:
    """Recompute the rows of `sample_ids` (under one scorer, or one embedder and scope, or all of them)
    from their links and losses. Call it inside the transaction that changed those inputs."""
    ids = db.id_table(np.unique(sample_ids))
    params = {"scorer_id": scorer_id, "embedder_id": embedder_id, "scope": scope_dataset}
    which = (
        "($scorer_id IS NULL OR {s} = $scorer_id) AND ($embedder_id IS NULL OR {e}embedder_id = $embedder_id)"
        " AND ($scope IS NULL OR {e}scope_dataset = $scope)"
    )
    with db.registered(conn, "_refreshed", ids):
        db.execute(
            conn,
            "DELETE FROM score_current WHERE sample_id IN (SELECT sample_id FROM _refreshed) AND "
            + which.format(s="scorer_id", e=""),
            params,
        )
        rows = "l.sample_id IN (SELECT sample_id FROM _refreshed) AND " + which.format(s="z.scorer_id", e="l.")
        db.execute(conn, "INSERT INTO score_current BY NAME " + _CURRENT_SQL.format(rows=rows), params)


def rebuild(conn: sa.Connection) -> None:
    """Recompute every row (for catalogs whose links and losses were written by SQL, as bench/ does)."""
    db.execute(conn, "DELETE FROM score_current")
    db.execute(conn, "INSERT INTO score_current BY NAME " + _CURRENT_SQL.format(rows="true") + " ORDER BY l.sample_id")
