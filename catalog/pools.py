"""Screening: a score run's pool beyond the catalog or a dataset, and what its calibration sample says.

A cascade is a cheap model over everything, `select` of its top K%, then the target model over
that selection only (`score --pool selection:ID`). What the saving cost is measured, not guessed:
`--calibrate P` also scores a seeded random P% of the full pool with the target, whatever the
screen kept; on that sample the target's own top K% is known, and the share of it inside the
screen estimates the share of the target's true top K% the screen kept (its recall).
"""

from __future__ import annotations

import math

import numpy as np
import sqlalchemy as sa

from catalog import db
from catalog.choices import STRATEGIES
from catalog.datasets import require_dataset
from catalog.errors import ArgumentError, UserError
from catalog.query import matching_ids
from catalog.score import RunPool
from catalog.store import Catalog

WILSON_Z = 1.959963984540054  # two-sided 95%
LISTED = 10  # selections named when a screen is not found


def resolve_pool(
    catalog: Catalog,
    dataset: str | None,
    selection_id: int | None,
    where: str | None,
    calibrate: float | None,
    seed: int,
) -> RunPool | None:
    """The samples a screened run scores: the current members of selection `selection_id` and/or the
    current samples matching `where` (within `dataset`), plus the calibration sample: a seeded random
    `calibrate`% of the full pool (the catalog, or `dataset`). None when neither screen is given (the
    pool is then the catalog or the dataset, as before). Errors before anything is loaded or written.
    """
    if selection_id is None and where is None:
        if calibrate is not None:
            raise ArgumentError("{0} needs {1} or {2} (it measures what a screen kept)", "calibrate", "pool", "where")
        return None
    with catalog.read() as conn:
        require_dataset(conn, dataset)
        full = _current(conn, dataset)
        ids = full
        if selection_id is not None:
            ids = np.intersect1d(ids, _screen(conn, selection_id, dataset, full))
        if where is not None:
            ids = np.intersect1d(ids, matching_ids(conn, where))
        calibration = _calibration(conn, full, calibrate, seed) if calibrate is not None else np.array([], np.int64)
    return RunPool(
        np.union1d(ids, calibration).astype(np.int64),
        selection_id,
        where,
        calibrate,
        seed if calibrate is not None else None,
        calibration,
    )


def _current(conn: sa.Connection, dataset: str | None) -> np.ndarray:
    """Sorted ids of the current samples (of `dataset`)."""
    table = db.query_arrow(
        conn,
        "SELECT DISTINCT sample_id FROM membership WHERE $dataset IS NULL OR dataset = $dataset ORDER BY 1",
        {"dataset": dataset},
    )
    return table["sample_id"].to_numpy().astype(np.int64)


def _screen(conn: sa.Connection, selection_id: int, dataset: str | None, current: np.ndarray) -> np.ndarray:
    """The members of selection `selection_id` that are current samples (of `dataset`); UserError,
    naming the selections there are, when it is unknown or none of its members is."""
    members = db.query_arrow(
        conn, "SELECT sample_id FROM selection_member WHERE selection_id = $id", {"id": selection_id}
    )["sample_id"].to_numpy()
    known = db.execute(conn, "SELECT 1 FROM selection WHERE selection_id = $id", {"id": selection_id})
    screened = np.intersect1d(current, members)
    if known and len(screened):
        return screened
    where = f" in dataset {dataset!r}" if dataset is not None else ""
    problem = f"selection {selection_id} has no current member{where}" if known else f"no selection {selection_id}"
    raise UserError(f"{problem}; {listed_selections(conn)}")


def listed_selections(conn: sa.Connection) -> str:
    """The newest recorded selections with their current members, for an error line."""
    rows = db.execute(
        conn,
        f"""SELECT s.selection_id, s.strategy, s.model,
                   count(DISTINCT m.sample_id) FILTER (WHERE m.sample_id IN (SELECT sample_id FROM membership))
            FROM selection s LEFT JOIN selection_member m USING (selection_id)
            GROUP BY ALL ORDER BY s.selection_id DESC LIMIT {LISTED + 1}""",
    )
    if not rows:
        return "no selection is recorded (make one with `python cli.py select`)"
    named = [
        f"{sid} ({strategy}{f' of {model}' if model else ''}, {current} current members)"
        for sid, strategy, model, current in rows[:LISTED]
    ]
    return "selections: " + ", ".join(named) + (", ..." if len(rows) > LISTED else "")


def _calibration(conn: sa.Connection, full: np.ndarray, percent: float, seed: int) -> np.ndarray:
    """Sorted ids of a seeded random `percent`% of `full` (rounded half up, at least 1): the first by
    md5(sample_id:seed), the order `select --strategy random` ranks by, so it is reproducible in SQL."""
    take = max(1, math.floor(len(full) * percent / 100 + 0.5))
    with db.registered(conn, "_full", db.id_table(full)):
        table = db.query_arrow(
            conn,
            f"SELECT sample_id FROM _full ORDER BY md5(sample_id::VARCHAR || ':{int(seed)}') LIMIT {take}",
        )
    return np.sort(table["sample_id"].to_numpy().astype(np.int64))


def cascade_estimate(
    conn: sa.Connection,
    scorer_id: int,
    embedder_id: int | None,
    strategy: str,
    top_percent: float,
    pool: str,
    scope_dataset: str = "",
) -> dict | None:
    """The share of the target's top `top_percent`% that its screen kept, estimated on its calibration sample
    (MIWV strategies: their scores in the scope `scope_dataset`).

    When the scorer's latest finished run (with `embedder_id`'s links, for MIWV strategies) was
    screened by a selection and scored a calibration sample: of the calibration samples in `pool`
    (the `pool AS (...)` CTE of the selection, so its text must already be checked), the target's
    top K% by the strategy (K% of all of them, rounded half up, at least 1, as `select` counts;
    only samples it can rank) are taken, and the share of them in the screen is the recall, with
    a Wilson 95% interval. None when there is no such run or no calibration sample it can rank.
    """
    chosen = STRATEGIES[strategy]
    if chosen.view is None:
        return None
    run = db.execute(
        conn,
        """SELECT run_id, pool_selection_id FROM score_run
           WHERE scorer_id = $scorer_id AND ($embedder_id IS NULL OR embedder_id = $embedder_id)
             AND finished_at IS NOT NULL
           ORDER BY run_id DESC LIMIT 1""",
        {"scorer_id": scorer_id, "embedder_id": embedder_id if chosen.needs_embedder else None},
    )
    if not run or run[0][1] is None:
        return None
    run_id, screen = run[0]
    calibrated, scored, top, kept = db.execute(
        conn,
        f"""WITH {pool},
            calibration AS (SELECT sample_id FROM score_calibration JOIN pool USING (sample_id) WHERE run_id = $run_id),
            scored AS (
                SELECT sample_id, m.{chosen.column} AS score FROM calibration JOIN {chosen.view} m USING (sample_id)
                WHERE {chosen.rows_of(scorer_id, embedder_id, scope_dataset)} AND {chosen.ranked_when}),
            top AS (
                SELECT sample_id FROM scored ORDER BY score {chosen.direction}, sample_id
                LIMIT (SELECT greatest(1, floor(count(*) * {float(top_percent)!r} / 100 + 0.5))::BIGINT
                       FROM calibration))
            SELECT (SELECT count(*) FROM calibration), (SELECT count(*) FROM scored), count(*),
                   count(*) FILTER (WHERE sample_id IN (
                       SELECT sample_id FROM selection_member WHERE selection_id = $screen))
            FROM top""",
        {"run_id": run_id, "screen": screen},
    )[0]
    if not top:
        return None
    low, high = wilson(kept, top)
    return {
        "screen_selection_id": screen,
        "calibration_run_id": run_id,
        "calibration_samples": calibrated,
        "calibration_scored": scored,
        "top_percent": float(top_percent),
        "calibration_top": top,
        "kept": kept,
        "recall": kept / top,
        "ci_low": low,
        "ci_high": high,
    }


def wilson(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial share (sound at 0 and 1 and for small samples, unlike p +- z*se)."""
    share = successes / trials
    scale = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / scale
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)
