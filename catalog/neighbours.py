"""Nearest-neighbour links per embedder and scope: duplicate groups in, current links out, changes saved per run.

A scope is where examples are searched, stored as `scope_dataset`: '' for the whole catalog (a
sample's example is its nearest other current sample), or a dataset's name (its nearest other
member of that dataset, the paper's setting). Each scope's links are kept like the catalog-wide
ones: a sample in two datasets has one link per dataset scope, each current within its dataset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from catalog import current_scores, db
from catalog.store import Catalog

NO_NEIGHBOUR = -1  # in link arrays: the sample has no neighbour (stored as NULL)


@dataclass(frozen=True)
class Links:
    """Links of one embedder, sorted by sample_id; NO_NEIGHBOUR / NaN where a sample has none."""

    ids: np.ndarray  # int64
    neighbour_ids: np.ndarray  # int64
    similarity: np.ndarray  # float64


CATALOG_WIDE = ""  # the scope_dataset of catalog-wide links


def scope_datasets(catalog: Catalog, dataset: str | None = None) -> list[str]:
    """The dataset scopes to link: `dataset`, or every dataset that has current members."""
    if dataset is not None:
        return [dataset]
    with catalog.read() as conn:
        return [row[0] for row in db.execute(conn, "SELECT DISTINCT dataset FROM membership ORDER BY 1")]


def current_groups(
    catalog: Catalog, ids: np.ndarray, scope_dataset: str = CATALOG_WIDE
) -> tuple[np.ndarray, np.ndarray]:
    """Of sorted embedded `ids`: the current samples in the scope (members of some dataset, or of
    `scope_dataset`), and for each a value per distinct user text (samples sharing it are exact
    duplicates of each other).

    Vectors outlive membership (a retired sample keeps its vector until a purge, and a purged one
    until the purge's LanceDB step is done), so the neighbours step asks here which ones count.
    """
    with catalog.read() as conn:
        with db.registered(conn, "wanted", db.id_table(ids)):
            table = db.query_arrow(
                conn,
                f"""
                SELECT s.sample_id, hash(s.user_text) AS text_group
                FROM sample s JOIN wanted w USING (sample_id)
                WHERE s.sample_id IN {IN_SCOPE}
                ORDER BY s.sample_id""",
                {"scope": scope_dataset},
            )
    return table["sample_id"].to_numpy(), table["text_group"].to_numpy().view(np.int64)


def current_links(catalog: Catalog, embedder_id: int, scope_dataset: str = CATALOG_WIDE) -> Links:
    """The stored links of `embedder_id` in a scope that still hold: of a current sample, to a current
    sample or to none (current: a member of the scope's dataset, or of any dataset catalog-wide).
    Removal deletes the others in its own transaction; one that a run racing an ingest
    --replace could leave would count as no link here, so the next run links that sample anew."""
    with catalog.read() as conn:
        table = db.query_arrow(
            conn,
            f"""
            SELECT sample_id, coalesce(neighbour_id, $none) AS neighbour_id, coalesce(similarity, 'NaN') AS similarity
            FROM neighbour_link l WHERE embedder_id = $embedder_id AND scope_dataset = $scope AND {_BOTH_CURRENT}
            ORDER BY sample_id""",
            {"embedder_id": embedder_id, "none": NO_NEIGHBOUR, "scope": scope_dataset},
        )
    return Links(table["sample_id"].to_numpy(), table["neighbour_id"].to_numpy(), table["similarity"].to_numpy())


# SQL: the current samples of scope $scope: members of its dataset, or of any dataset catalog-wide.
IN_SCOPE = "(SELECT sample_id FROM membership WHERE $scope = '' OR dataset = $scope)"
# A link row `l` of scope $scope whose sample and neighbour (if any) are current in that scope.
_BOTH_CURRENT = f"""l.sample_id IN {IN_SCOPE} AND (l.neighbour_id IS NULL OR l.neighbour_id IN {IN_SCOPE})"""


def save_links(
    catalog: Catalog,
    embedder_id: int,
    changed: Links,
    *,
    scope_dataset: str = CATALOG_WIDE,
    method: str,
    mode: str,
    samples: int,
    new_samples: int,
    started_at: datetime,
) -> int:
    """Record a neighbour run of a scope, upsert the links it changed and recompute those samples' current
    scores (a moved link leaves them stale), in one transaction; returns the run id.

    Only links between current samples are written: ingest --replace holds no job lock, so a sample
    may have left since the search read the catalog; its link is not written, and a link to it is
    deleted instead (that sample is linked anew by the next run, as a new one).
    """
    now = db.utcnow()
    has = changed.neighbour_ids != NO_NEIGHBOUR
    with catalog.write() as conn:
        run_id = db.next_id(conn, "neighbour_run", "run_id")
        db.execute(
            conn,
            """INSERT INTO neighbour_run (run_id, embedder_id, method, mode, samples, new_samples, links_changed,
                                         started_at, finished_at, scope_dataset)
            VALUES ($run_id, $embedder_id, $method, $mode, $samples, $new_samples, $links_changed,
                    $started_at, $now, $scope)""",
            {
                "scope": scope_dataset,
                "run_id": run_id,
                "embedder_id": embedder_id,
                "method": method,
                "mode": mode,
                "samples": samples,
                "new_samples": new_samples,
                "links_changed": len(changed.ids),
                "started_at": started_at,
                "now": now,
            },
        )
        rows = pa.table(
            {
                "sample_id": pa.array(changed.ids, pa.int64()),
                "neighbour_id": pa.array(changed.neighbour_ids, pa.int64(), mask=~has),
                "similarity": pa.array(changed.similarity, pa.float64(), mask=~has),
            }
        )
        with db.registered(conn, "changed", rows):
            db.execute(  # a link whose sample or neighbour left while the search ran: the sample needs a new one
                conn,
                f"""DELETE FROM neighbour_link WHERE embedder_id = $embedder_id AND scope_dataset = $scope
                    AND sample_id IN (SELECT sample_id FROM changed l WHERE NOT ({_BOTH_CURRENT}))""",
                {"embedder_id": embedder_id, "scope": scope_dataset},
            )
            db.execute(
                conn,
                f"""
                INSERT INTO neighbour_link (sample_id, embedder_id, neighbour_id, similarity, run_id, computed_at,
                                            scope_dataset)
                SELECT sample_id, $embedder_id, neighbour_id, similarity, $run_id, $now, $scope FROM changed l
                WHERE {_BOTH_CURRENT}
                ON CONFLICT (sample_id, embedder_id, scope_dataset) DO UPDATE SET
                    neighbour_id = excluded.neighbour_id, similarity = excluded.similarity,
                    run_id = excluded.run_id, computed_at = excluded.computed_at""",
                {"embedder_id": embedder_id, "run_id": run_id, "now": now, "scope": scope_dataset},
            )
        current_scores.refresh(conn, changed.ids, embedder_id=embedder_id, scope_dataset=scope_dataset)
    return run_id
