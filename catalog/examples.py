"""Lists of each sample's K nearest examples (`score --examples K`), and how stable MIWV is over them.

A list is kept per sample, embedder and scope (`scope_dataset`: '' catalog-wide, else a dataset),
rank 1 first; the one-shot loss with the k-th example is the one_shot_loss row for that neighbour,
so MIWV@k costs one pass per (sample, example) and none twice. `miwv_examples` (migration 0011)
joins the lists that are still current to their losses; `stability` reads it to answer the paper's
critique: is a sample's MIWV a property of the sample, or of which example was found for it?
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from catalog import db
from catalog.neighbours import IN_SCOPE, NO_NEIGHBOUR
from catalog.store import Catalog


def save_lists(
    catalog: Catalog,
    embedder_id: int,
    scope_dataset: str,
    ids: np.ndarray,
    neighbour_ids: np.ndarray,
    similarity: np.ndarray,
) -> int:
    """Replace the stored lists of `ids` under the embedder and scope, in one transaction; returns the
    rows written.

    Args:
        ids: int64 [n] samples.
        neighbour_ids: int64 [n, K], nearest first (scoring.examples.nearest_examples); NO_NEIGHBOUR pads.
        similarity: float64 [n, K].

    A list is written only when its sample and every example in it are still current in the scope:
    a list found before one of them left would miss the sample that now takes its place, so that
    sample gets no list and is listed anew by the next run.
    """
    ids = np.asarray(ids, np.int64)
    neighbour_ids, similarity = np.asarray(neighbour_ids, np.int64), np.asarray(similarity, np.float64)
    rows, ranks = np.nonzero(neighbour_ids != NO_NEIGHBOUR)
    listed = pa.table(
        {
            "sample_id": pa.array(ids[rows], pa.int64()),
            "rank": pa.array(ranks + 1, pa.int32()),
            "neighbour_id": pa.array(neighbour_ids[rows, ranks], pa.int64()),
            "similarity": pa.array(similarity[rows, ranks], pa.float64()),
        }
    )
    params = {"embedder_id": embedder_id, "scope": scope_dataset}
    with (
        catalog.write() as conn,
        db.registered(conn, "_lists", db.id_table(ids)),
        db.registered(conn, "_listed", listed),
    ):
        db.execute(
            conn,
            """DELETE FROM example_list WHERE embedder_id = $embedder_id AND scope_dataset = $scope
               AND sample_id IN (SELECT sample_id FROM _lists)""",
            params,
        )
        return db.execute(
            conn,
            f"""
            INSERT INTO example_list (sample_id, embedder_id, scope_dataset, rank, neighbour_id, similarity,
                                      computed_at)
            SELECT sample_id, $embedder_id, $scope, rank, neighbour_id, similarity, $now FROM _listed
            WHERE sample_id IN {IN_SCOPE}
              AND sample_id NOT IN (SELECT sample_id FROM _listed WHERE neighbour_id NOT IN {IN_SCOPE})
            ORDER BY sample_id, rank""",
            {**params, "now": db.utcnow()},
        )[0][0]


def listed_pairs(
    catalog: Catalog,
    embedder_id: int,
    scope_dataset: str,
    ids: np.ndarray | None = None,
    missing_for: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (sample, example) pairs of the stored lists of `ids` (every list when None), sorted by
    sample_id then neighbour_id; with `missing_for` a scorer id, only those without its one-shot loss:
    the one-shot passes `score --examples K` still has to run."""
    with catalog.read() as conn, db.registered(conn, "_wanted", db.id_table(ids if ids is not None else [])):
        table = db.query_arrow(
            conn,
            """
            SELECT DISTINCT x.sample_id, x.neighbour_id FROM example_list x
            WHERE x.embedder_id = $embedder_id AND x.scope_dataset = $scope
              AND ($all OR x.sample_id IN (SELECT sample_id FROM _wanted))
              AND ($scorer_id IS NULL OR NOT EXISTS (
                  SELECT 1 FROM one_shot_loss o
                  WHERE o.sample_id = x.sample_id AND o.neighbour_id = x.neighbour_id AND o.scorer_id = $scorer_id))
            ORDER BY x.sample_id, x.neighbour_id""",
            {"embedder_id": embedder_id, "scope": scope_dataset, "all": ids is None, "scorer_id": missing_for},
        )
    return table["sample_id"].to_numpy().astype(np.int64), table["neighbour_id"].to_numpy().astype(np.int64)


@dataclass(frozen=True)
class Stability:
    """How far a scorer's MIWV holds when each sample's example is its 2nd nearest instead of its 1st.

    samples: current samples with MIWV (status ok) under both their 1st and 2nd example.
    examples: the largest K with a loss (MIWV@K exists for some sample).
    rank_correlation: Spearman's correlation of MIWV@1 and MIWV@2 over those samples (average ranks
        for ties, as scipy.stats.spearmanr); None when it is undefined (fewer than 2, or constant).
    top_share: of the top `percent`% of those samples by MIWV@1 (K% rounded half up, at least 1; ties
        to the smaller sample_id, as `select` ranks), the share also in the top `percent`% by MIWV@2.
    loss_correlation: Pearson's correlation of L_one (with the 1st example) and L_zero over the scored
        samples of the scope: near 1, the example moves every sample's loss alike.
    spread: the median over samples with 2+ examples of max - min of their MIWV over their examples.
    """

    samples: int
    examples: int
    rank_correlation: float | None
    top_share: float
    percent: float
    loss_correlation: float | None
    spread: float

    @property
    def meaning(self) -> str:
        """The figures in plain words."""
        return meaning(self)

    def as_dict(self) -> dict:
        return {**asdict(self), "meaning": self.meaning}


def meaning(figures: Stability) -> str:
    """What the stability figures say about MIWV on this data and model, in a few sentences."""
    rho = figures.rank_correlation
    if rho is None:
        said = "Too few samples (or MIWV too uniform) to tell whether MIWV depends on which example was found."
    elif rho >= 0.8:
        said = "MIWV here is mostly a property of the sample: the 2nd example ranks the samples much as the 1st does."
    elif rho >= 0.5:
        said = (
            "MIWV here follows the sample, but which example was found moves it noticeably: "
            "ranking on the mean over several examples (miwv-mean) steadies it."
        )
    else:
        said = (
            "MIWV here is driven by which example was found, more than by the sample: a top-K% on it largely "
            "picks samples that drew an unhelpful example; rank on miwv-mean, or drop weak examples "
            "(min_similarity)."
        )
    kept = (
        f" {figures.top_share:.0%} of the top {figures.percent:g}% by MIWV@1 stays in the top {figures.percent:g}% "
        f"with the 2nd example (unrelated scores would keep about {figures.percent:g}%)."
    )
    r = figures.loss_correlation
    if r is None:
        return said + kept
    uses = (
        "the loss with an example mostly repeats the loss without it: the model uses its example little, so MIWV "
        "is a small difference between two close numbers"
        if r >= 0.95
        else "the example changes the loss sample by sample: the model uses it"
    )
    return f"{said}{kept} L_one against L_zero: r = {r:.2f}; {uses}."


# MIWV with each listed example (miwv_examples: lists still current), status ok, of current samples of
# the scope; then the figures of Stability. Spearman: Pearson's correlation of average ranks.
STABILITY_SQL = f"""
    WITH listed AS (
        SELECT x.sample_id, x.rank, x.miwv FROM miwv_examples x
        WHERE x.scorer_id = $scorer AND x.embedder_id = $embedder AND coalesce(x.scope_dataset, '') = $scope
          AND x.status = 'ok' AND x.sample_id IN {IN_SCOPE}
    ),
    pairs AS (
        SELECT sample_id, any_value(miwv) FILTER (WHERE rank = 1) AS first,
               any_value(miwv) FILTER (WHERE rank = 2) AS second
        FROM listed WHERE rank <= 2 GROUP BY sample_id HAVING count(*) = 2
    ),
    ranked AS (
        SELECT rank() OVER (ORDER BY first) + (count(*) OVER (PARTITION BY first) - 1) / 2 AS rank_first,
               rank() OVER (ORDER BY second) + (count(*) OVER (PARTITION BY second) - 1) / 2 AS rank_second,
               row_number() OVER (ORDER BY first DESC, sample_id) AS top_first,
               row_number() OVER (ORDER BY second DESC, sample_id) AS top_second
        FROM pairs
    ),
    top AS (SELECT greatest(1, floor(count(*) * $percent / 100 + 0.5))::BIGINT AS k FROM pairs),
    spreads AS (SELECT max(miwv) - min(miwv) AS spread FROM listed GROUP BY sample_id HAVING count(*) >= 2)
    SELECT count(*) AS samples,
           (SELECT max(rank) FROM listed) AS examples,
           corr(rank_first, rank_second) AS rank_correlation,
           count(*) FILTER (WHERE top_first <= k AND top_second <= k) / any_value(k) AS top_share,
           (SELECT corr(c.one_shot_loss, c.zero_shot_loss) FROM score_current c
            WHERE c.scorer_id = $scorer AND c.embedder_id = $embedder AND c.scope_dataset = $scope
              AND c.status = 'ok' AND c.sample_id IN {IN_SCOPE}) AS loss_correlation,
           (SELECT median(spread) FROM spreads) AS spread
    FROM ranked, top
"""


def stability(
    catalog: Catalog, scorer_id: int, embedder_id: int, scope_dataset: str, percent: float = 5.0
) -> Stability | None:
    """The stability figures of a scorer's MIWV over its example lists in a scope ('' catalog-wide,
    else a dataset's name); None when no current sample has MIWV with both its 1st and 2nd example."""
    with catalog.read() as conn:
        return stability_in(conn, scorer_id, embedder_id, scope_dataset, percent)


def stability_in(
    conn: sa.Connection, scorer_id: int, embedder_id: int, scope_dataset: str, percent: float = 5.0
) -> Stability | None:
    """stability() on an open connection (the report reads it with its other figures)."""
    params = {"scorer": scorer_id, "embedder": embedder_id, "scope": scope_dataset, "percent": float(percent)}
    row = db.records(conn, STABILITY_SQL, params)[0]
    if not row["samples"]:
        return None
    return Stability(
        samples=row["samples"],
        examples=row["examples"],
        rank_correlation=_number(row["rank_correlation"]),
        top_share=row["top_share"],
        percent=float(percent),
        loss_correlation=_number(row["loss_correlation"]),
        spread=row["spread"],
    )


def _number(value: float | None) -> float | None:
    """A correlation as a float, None where it is undefined (DuckDB gives NULL or NaN)."""
    return None if value is None or np.isnan(value) else float(value)
