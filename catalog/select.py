"""Selecting the top K% (or top K) of a pool by MIWV or an ablation strategy, as one SQL query
over the public views, recorded so the subset can be reproduced and diffed."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from catalog import db
from catalog.choices import SCOPES, STRATEGIES, Strategy, sql_text
from catalog.datasets import require_dataset
from catalog.errors import ArgumentError, UserError
from catalog.export import Exported, Stage, check_target, staged, write_samples
from catalog.lifecycle import pool_versions
from catalog.pools import cascade_estimate
from catalog.query import one_condition, run_read_only
from catalog.store import Catalog


@dataclass(frozen=True)
class Request:
    """What to select.

    Exactly one of top_k / top_percent. K% is taken of the pool size (every pool sample,
    scored or not), rounded half up, at least 1. Ties go to the smaller sample_id.
    Strategies with an example rank on the scores of one scope: "catalog" (examples from the whole
    catalog) or "dataset" (each sample's example from `dataset`, which it then needs).
    `min_similarity` drops samples whose (1st) example is less similar (cosine) than it.
    """

    strategy: str = "miwv"
    top_k: int | None = None
    top_percent: float | None = None
    dataset: str | None = None
    where: str | None = None  # an SQL condition on the `samples` view
    seed: int = 0  # random strategy only
    scorer_id: int | None = None  # scored strategies: whose scores, with whose neighbours
    embedder_id: int | None = None
    scope: str = "catalog"
    min_similarity: float | None = None

    @property
    def scope_dataset(self) -> str:
        """The scope as stored: '' catalog-wide, else the dataset's name."""
        return self.dataset if self.scope == "dataset" and self.dataset is not None else ""


@dataclass(frozen=True)
class Selection:
    selection_id: int
    sql: str
    pool_size: int
    eligible: int  # pool samples the strategy can rank
    excluded: dict[str, int]  # pool samples it cannot, by reason
    sample_ids: list[int]  # ranked
    scores: list[float | None]
    cascade: dict | None = None  # the screen its scores came through and its recall estimate (catalog.pools)


def selection_sql(request: Request) -> str:
    """The query that makes the selection: copy it, adapt it, run it with `cli.py sql`."""
    if request.strategy not in STRATEGIES:
        raise ArgumentError(
            f"{{0}} must be one of {', '.join(STRATEGIES)}", "strategy", detail=f"got {request.strategy!r}"
        )
    _check_numbers(request)
    strategy = STRATEGIES[request.strategy]
    _check_scope(request, strategy)
    if strategy.view is None:
        ranked = "SELECT sample_id, NULL::DOUBLE AS score FROM pool"
        order = f"md5(sample_id::VARCHAR || ':{int(request.seed)}')"
    else:
        ranked = (
            f"SELECT sample_id, m.{strategy.column} AS score\n"
            f"    FROM pool JOIN {strategy.view} m USING (sample_id)\n"
            f"    WHERE {_rows(request, strategy)} AND {_ranked_when(request, strategy)}"
        )
        order = f"score {strategy.direction}, sample_id"
    if request.top_k is not None:
        limit = str(int(request.top_k))
    else:
        limit = f"(SELECT greatest(1, floor(count(*) * {float(request.top_percent)!r} / 100 + 0.5))::BIGINT FROM pool)"
    return (
        f"WITH {_pool(request)},\nranked AS (\n    {ranked}\n)\n"
        f"SELECT sample_id, score\nFROM ranked\nORDER BY {order}\nLIMIT {limit}"
    )


INT32 = (-(2**31), 2**31 - 1)  # selection.top_k and selection.seed are INTEGER columns


def _check_numbers(request: Request) -> None:
    """Refuse counts, percentages and seeds the selection tables cannot hold, before any work."""
    if (request.top_k is None) == (request.top_percent is None):
        raise ArgumentError("give exactly one of {0} and {1}", "top_k", "top_percent")
    if request.top_k is not None and not (isinstance(request.top_k, int) and 1 <= request.top_k <= INT32[1]):
        raise ArgumentError(
            f"{{0}} must be a whole number from 1 to {INT32[1]}", "top_k", detail=f"got {request.top_k}"
        )
    if request.top_percent is not None and not (
        isinstance(request.top_percent, int | float) and 0 < request.top_percent <= 100
    ):
        raise ArgumentError(
            "{0} must be a number above 0 and at most 100", "top_percent", detail=f"got {request.top_percent}"
        )
    if not (isinstance(request.seed, int) and INT32[0] <= request.seed <= INT32[1]):
        raise ArgumentError(
            f"{{0}} must be a whole number from {INT32[0]} to {INT32[1]}", "seed", detail=f"got {request.seed}"
        )


def _check_scope(request: Request, strategy: Strategy) -> None:
    """Refuse an unknown scope, a dataset scope without its dataset, and a similarity floor on a
    strategy without an example, before any work."""
    if request.scope not in SCOPES:
        raise ArgumentError(f"{{0}} must be one of {', '.join(SCOPES)}", "scope", detail=f"got {request.scope!r}")
    if request.scope == "dataset" and request.dataset is None:
        raise ArgumentError("{0} 'dataset' ranks on examples from one dataset: give {1}", "scope", "dataset")
    if request.min_similarity is None:
        return
    if not strategy.needs_embedder:
        raise ArgumentError(
            f"{{0}} applies to strategies that rank with an example, not {request.strategy}", "min_similarity"
        )
    value = request.min_similarity
    if not (isinstance(value, int | float) and not isinstance(value, bool) and -1 <= value <= 1):
        raise ArgumentError("{0} must be a cosine similarity from -1 to 1", "min_similarity", detail=f"got {value}")


def _rows(request: Request, strategy: Strategy) -> str:
    """SQL: the strategy's view rows `m` of the request's scorer, embedder and scope."""
    return strategy.rows_of(request.scorer_id, request.embedder_id, request.scope_dataset)


def _ranked_when(request: Request, strategy: Strategy) -> str:
    """SQL: a row `m` the selection can rank: the strategy's rule, and the example similarity floor."""
    return strategy.ranked_when + _similar_enough(request)


def _similar_enough(request: Request) -> str:
    return f" AND m.similarity >= {float(request.min_similarity)!r}" if request.min_similarity is not None else ""


def select(
    catalog: Catalog,
    request: Request,
    out: str | Path | None = None,
    file_format: str | None = None,
    shape: str | None = None,
    with_scores: bool = False,
    for_: str | None = None,
) -> tuple[Selection, Exported | None]:
    """Run the selection query read-only (`where` is user SQL), write the samples to a staging
    path beside `out` (if given; see catalog.export: in a trainer's own layout when `for_` names
    one), then record the selection and its ranked members in one transaction, moving the file
    into place just before it commits. A failure at any step records nothing and leaves `out` as
    it was; an `out` this tool may not overwrite is refused before anything runs.
    """
    sql = selection_sql(request)
    if for_ is not None and file_format is not None:
        raise ArgumentError("give at most one of {0} and {1}", "file_format", "for_")
    target = check_target(catalog, out, for_ or file_format) if out is not None else None
    with catalog.read() as conn:
        require_dataset(conn, request.dataset)
        try:
            chosen = run_read_only(conn, sql, allowed=("SELECT",))
        except UserError as error:
            raise (
                ArgumentError("{0} is not one SQL condition on the `samples` view", "where", detail=str(error))
                if request.where
                else error
            ) from None
        reasons = dict(db.execute(conn, _eligibility_sql(request)))
        pool = pool_versions(conn, request.dataset)  # the state this query read
        pool_size = sum(reasons.values())
        cascade = _cascade(conn, request, pool_size)
    eligible = reasons.pop("eligible", 0)
    chosen_ids = chosen["sample_id"].to_pylist()
    with staged(target.path) if target else nullcontext() as stage:
        exported = None
        if target is not None:
            exported = write_samples(
                catalog,
                chosen_ids,
                target,
                stage.path,
                shape,
                with_scores,
                request.scorer_id,
                request.embedder_id,
                request.scope_dataset,
            )
        selection_id = _record(catalog, request, sql, chosen, pool_size, eligible, pool, cascade, exported, stage)
    selection = Selection(
        selection_id, sql, pool_size, eligible, reasons, chosen_ids, chosen["score"].to_pylist(), cascade
    )
    return selection, exported


def _cascade(conn, request: Request, pool_size: int) -> dict | None:
    """The recall estimate of the screen the scorer's scores came through, if they did (catalog.pools);
    a top_k is taken as that share of the pool."""
    if request.scorer_id is None or not pool_size:
        return None
    percent = request.top_percent if request.top_percent is not None else 100 * request.top_k / pool_size
    return cascade_estimate(
        conn,
        request.scorer_id,
        request.embedder_id,
        request.strategy,
        min(percent, 100.0),
        _pool(request),
        request.scope_dataset,
    )


def _record(
    catalog: Catalog,
    request: Request,
    sql: str,
    chosen: pa.Table,
    pool_size: int,
    eligible: int,
    pool: tuple[int | None, str],
    cascade: dict | None,
    exported: Exported | None,
    stage: Stage | None,
) -> int:
    """Record the selection and its members; the export is published inside the transaction.
    `pool`: the last catalog change and the dataset versions the selection drew from, so that
    `selections` can tell when its pool has changed since; `cascade`: its screen's recall estimate."""
    with catalog.write() as conn:
        selection_id = db.next_id(conn, "selection", "selection_id")
        db.execute(
            conn,
            """INSERT INTO selection (selection_id, model, scorer_id, embedder, strategy, top_k, top_percent, seed,
                                   dataset, pool_where, pool_size, eligible, selected, sql, output, created_at,
                                   pool_change_id, pool_versions, cascade)
                            VALUES ($selection_id, (SELECT model FROM scorer WHERE scorer_id = $scorer_id),
                                   $scorer_id, (SELECT name FROM embedder WHERE embedder_id = $embedder_id), $strategy,
                                   $top_k, $top_percent, $seed, $dataset, $pool_where, $pool_size, $eligible, $selected,
                                   $sql, $output, $now, $pool_change_id, $pool_versions, $cascade)""",
            {
                "selection_id": selection_id,
                "scorer_id": request.scorer_id,
                "embedder_id": request.embedder_id,
                "strategy": request.strategy,
                "top_k": request.top_k,
                "top_percent": request.top_percent,
                "seed": request.seed if request.strategy == "random" else None,
                "dataset": request.dataset,
                "pool_where": request.where,
                "pool_size": pool_size,
                "eligible": eligible,
                "selected": chosen.num_rows,
                "sql": sql,
                "output": str(exported.path.resolve()) if exported else None,
                "now": db.utcnow(),
                "pool_change_id": pool[0],
                "pool_versions": pool[1],
                "cascade": json.dumps(cascade) if cascade else None,
            },
        )
        db.insert_arrow(
            conn,
            "selection_member",
            pa.table(
                {
                    "selection_id": pa.array([selection_id] * chosen.num_rows, pa.int32()),
                    "sample_id": chosen["sample_id"],
                    "rank": pa.array(range(1, chosen.num_rows + 1), pa.int32()),
                    "score": chosen["score"].cast(pa.float64()),
                }
            ),
        )
        if stage is not None:
            stage.publish()
    return selection_id


# How a selection's pool stands now (SQL over `selection s` joined to `gone`; the web shows it too):
# pool_versions: {dataset: version} it drew from (NULL for selections recorded before versions were kept);
# pool_changed: a later change brought rows into or took rows out of its dataset (any dataset when it
# had none); NULL when unknown; members_gone: its members now retired or purged (in no dataset).
MEMBERS_GONE = """gone AS (
    SELECT selection_id, count(*) AS members_gone
    FROM selection_member ANTI JOIN (SELECT DISTINCT sample_id FROM membership) USING (sample_id)
    GROUP BY selection_id)"""
POOL_STATE = """pool_versions,
                   CASE WHEN s.pool_change_id IS NOT NULL THEN EXISTS (
                       SELECT 1 FROM dataset_version v
                       WHERE v.change_id > s.pool_change_id AND v.rows_in + v.rows_out > 0
                         AND (s.dataset IS NULL OR v.dataset = s.dataset)) END AS pool_changed,
                   coalesce(gone.members_gone, 0) AS members_gone"""


def list_selections(catalog: Catalog) -> list[dict]:
    """Every recorded selection, newest first, with the state of its pool since (see POOL_STATE) and its
    cascade (the screen its scores came through, with the recall estimate; None when none)."""
    with catalog.read() as conn:
        rows = db.records(
            conn,
            f"""
            WITH {MEMBERS_GONE}
            SELECT selection_id, strategy, model, embedder, top_k, top_percent, seed, dataset, pool_where,
                   pool_size, eligible, selected, output, strftime(created_at, '%Y-%m-%d %H:%M:%S') AS created_at,
                   cascade, {POOL_STATE}
            FROM selection s LEFT JOIN gone USING (selection_id) ORDER BY selection_id DESC""",
        )
    for row in rows:
        row["pool_versions"] = json.loads(row["pool_versions"]) if row["pool_versions"] else None
        row["cascade"] = json.loads(row["cascade"]) if row["cascade"] else None
    return rows


def _pool(request: Request) -> str:
    conditions = []
    if request.dataset is not None:
        conditions.append(f"list_contains(datasets, {sql_text(request.dataset)})")
    if request.where:
        try:
            conditions.append(f"({one_condition(request.where)})")
        except UserError as error:
            raise ArgumentError(
                "{0} is not one SQL condition on the `samples` view", "where", detail=str(error)
            ) from None
    where = f"\n    WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"pool AS (\n    SELECT sample_id FROM samples{where}\n)"


def _eligibility_sql(request: Request) -> str:
    """Pool samples per reason: 'eligible', the strategy's `ineligible` reason, an example below
    `min_similarity`, a status of its view, or its `unscored` reason (no row: none yet, or stale)."""
    strategy = STRATEGIES[request.strategy]
    if strategy.view is None:
        return f"WITH {_pool(request)}\nSELECT 'eligible', count(*) FROM pool"
    scored = f"m.status = 'ok' AND m.{strategy.column} IS NOT NULL"
    left_out = ""
    if strategy.eligible:
        left_out += f"\n                    WHEN {scored} AND NOT ({strategy.eligible}) THEN '{strategy.ineligible}'"
    if request.min_similarity is not None:
        below = f"example similarity below {float(request.min_similarity):g}"
        left_out += f"\n                    WHEN {scored} THEN {sql_text(below)}"
    return f"""WITH {_pool(request)}
        SELECT CASE WHEN {_ranked_when(request, strategy)} AND m.{strategy.column} IS NOT NULL THEN 'eligible'{left_out}
                    ELSE coalesce(m.status, {sql_text(strategy.unscored)}) END, count(*)
        FROM pool LEFT JOIN {strategy.view} m ON m.sample_id = pool.sample_id AND {_rows(request, strategy)}
        GROUP BY 1"""
