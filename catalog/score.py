"""Scorers and their losses: what still needs a pass, and each batch's results written in one transaction."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
import pyarrow as pa

from catalog import current_scores, db
from catalog.datasets import require_dataset
from catalog.errors import UserError
from catalog.neighbours import CATALOG_WIDE, NO_NEIGHBOUR
from catalog.store import Catalog

Messages = tuple[tuple[str, str], ...]  # (role, content); optional system, user/assistant turns, ends with assistant
AlpacaFields = tuple[str, str]  # (instruction, input) of an Alpaca record; its user turn was joined from them


@dataclass(frozen=True)
class TemplateKey:
    """What identifies a prompt template: its name, the revision of the rendering code, the hash of its text."""

    name: str
    revision: int
    digest: str


@dataclass(frozen=True)
class ScorerRow:
    scorer_id: int
    model: str
    source: str
    template: str
    max_length: int
    dtype: str
    template_revision: int
    template_hash: str | None  # None for revision 1 (before the hash was recorded)
    template_text: str | None  # what it rendered with; None before migration 0008


@dataclass(frozen=True)
class PendingSample:
    """A sample in the pool and the passes it still needs for a scorer and embedder."""

    sample_id: int
    messages: Messages
    neighbour_id: int | None
    neighbour_messages: Messages | None
    need_zero: bool
    need_one: bool
    fields: AlpacaFields | None = None
    neighbour_fields: AlpacaFields | None = None
    need_response: bool = False  # the response alone (IFD's denominator)


class PassKind(StrEnum):
    """Which loss a pass computes: without an example, after its neighbour as the example, or of the
    response alone (no prompt: one start token before it)."""

    ZERO = "zero"
    ONE = "one"
    RESPONSE = "response"


LOSS_TABLES = {PassKind.ZERO: "zero_shot_loss", PassKind.ONE: "one_shot_loss", PassKind.RESPONSE: "response_loss"}

DEFAULT_METRICS = ("miwv",)  # of choices.METRICS: what a score run computes unless asked for more


@dataclass(frozen=True)
class PassResult:
    """One pass's outcome; losses are None unless status is "ok"."""

    kind: PassKind
    sample_id: int
    neighbour_id: int | None
    status: str  # "ok", "too_long", "too_long_one_shot"; a response pass: "ok", "too_long"
    sum_nll: float | None = None
    n_response_tokens: int | None = None
    n_tokens: int | None = None  # the whole sequence (prompt + response)
    example_truncated: bool = False


@dataclass(frozen=True)
class PoolPlan:
    """The samples a score run covers, and which of them need passes: ids only, sorted by
    sample_id, so a pool of millions stays small in memory (messages are read per unit)."""

    samples: int
    not_linked: int  # no neighbour link for the embedder yet (run `embed`)
    ids: np.ndarray  # int64 [pending]
    neighbour_ids: np.ndarray  # int64 [pending]; NO_NEIGHBOUR (-1) where the sample has none
    need_zero: np.ndarray  # bool [pending]
    need_one: np.ndarray  # bool [pending]
    need_response: np.ndarray | None = None  # bool [pending]; None: no response passes (metrics without ifd)


@dataclass(frozen=True)
class RunPool:
    """A pool that is not the catalog or a dataset: a screen (a recorded selection) or a condition,
    plus a calibration sample."""

    ids: np.ndarray  # sorted int64: the samples to score (screened ones and the calibration sample)
    selection_id: int | None
    where: str | None
    calibrate_percent: float | None
    calibrate_seed: int | None
    calibration_ids: np.ndarray  # sorted int64, a subset of ids


@dataclass(frozen=True)
class WorkerRow:
    """A process that ran passes of a score run: where, and on which device."""

    worker: int  # 0 in-process; Ray workers count from 0 in the order they started
    node_id: str
    device: str


def register_scorer(
    catalog: Catalog,
    model: str,
    source: str,
    fingerprint: str,
    template: TemplateKey,
    max_length: int,
    dtype: str,
    template_text: str | None = None,
) -> ScorerRow:
    """The scorer for this model file, template (name, revision, hash), max length and dtype (made on first use).

    It records the template's text (`template_text`, which hashes to `template.digest`) so the
    inputs it saw can be rebuilt anywhere; a scorer from before the text was kept gets it now."""
    key = {
        "fingerprint": fingerprint,
        "template": template.name,
        "template_revision": template.revision,
        "template_hash": template.digest,
        "max_length": max_length,
        "dtype": dtype,
    }
    where = " AND ".join(f"{column} = ${column}" for column in key)
    with catalog.write() as conn:
        rows = db.execute(conn, f"SELECT {_SCORER_COLUMNS} FROM scorer WHERE {where}", key)
        if rows:
            return _with_text(conn, ScorerRow(*rows[0]), template_text)
        scorer_id = db.next_id(conn, "scorer", "scorer_id")
        db.execute(
            conn,
            """INSERT INTO scorer (scorer_id, model, source, fingerprint, template, max_length, dtype, created_at,
                                   template_revision, template_hash, template_text)
            VALUES ($scorer_id, $model, $source, $fingerprint, $template, $max_length, $dtype, $now,
                    $template_revision, $template_hash, $template_text)""",
            {
                **key,
                "scorer_id": scorer_id,
                "model": model,
                "source": source,
                "now": db.utcnow(),
                "template_text": template_text,
            },
        )
    return ScorerRow(
        scorer_id, model, source, template.name, max_length, dtype, template.revision, template.digest, template_text
    )


def _with_text(conn, scorer: ScorerRow, template_text: str | None) -> ScorerRow:
    """`scorer`, its template text recorded if it had none (registered before migration 0008)."""
    if scorer.template_text is not None or template_text is None:
        return scorer
    db.execute(
        conn,
        "UPDATE scorer SET template_text = $text WHERE scorer_id = $scorer_id",
        {"text": template_text, "scorer_id": scorer.scorer_id},
    )
    return replace(scorer, template_text=template_text)


_SCORER_COLUMNS = (
    "scorer_id, model, source, template, max_length, dtype, template_revision, template_hash, template_text"
)


def find_scorer(catalog: Catalog, model: str, scorer_id: int | None = None) -> ScorerRow:
    """The scorer of `model` (its newest that has losses, unless `scorer_id` picks one); UserError if
    there is none. A scorer without losses (a run that stopped before its first commit) is never
    the default: it would make `select` and `report` see an empty pool."""
    with catalog.read() as conn:
        rows = [
            ScorerRow(*r)
            for r in db.execute(
                conn,
                f"""SELECT {_SCORER_COLUMNS} FROM scorer s WHERE model = $model AND ($scorer_id IS NOT NULL
                        OR EXISTS (SELECT 1 FROM zero_shot_loss z WHERE z.scorer_id = s.scorer_id))
                    ORDER BY scorer_id DESC""",
                {"model": model, "scorer_id": scorer_id},
            )
        ]
        known = [r[0] for r in db.execute(conn, "SELECT DISTINCT model FROM scorer ORDER BY 1")]
    if scorer_id is not None:
        rows = [r for r in rows if r.scorer_id == scorer_id]
    if not rows:
        raise UserError(
            f"no scores for model {model!r}{f' (scorer {scorer_id})' if scorer_id else ''}; "
            f"scored models: {', '.join(known) or 'none'} (run `python cli.py score --model {model}`)"
        )
    return rows[0]


def check_pool(catalog: Catalog, dataset: str | None) -> None:
    """UserError before anything is written when the pool names an unknown dataset."""
    with catalog.read() as conn:
        require_dataset(conn, dataset)


def example_join(rank: int) -> str:
    """SQL: JOIN a pool sample `p` to its example `l` (sample_id, neighbour_id) under $embedder_id in
    $scope: its neighbour link (rank 1), or the rank-th of its listed examples (`score --examples`)."""
    if rank == 1:
        return """JOIN neighbour_link l
                   ON l.sample_id = p.sample_id AND l.embedder_id = $embedder_id AND l.scope_dataset = $scope"""
    return """JOIN example_list l ON l.sample_id = p.sample_id AND l.embedder_id = $embedder_id
                   AND l.scope_dataset = $scope AND l.rank = $rank"""


def _example_params(embedder_id: int, scope_dataset: str, rank: int) -> dict:
    return {"embedder_id": embedder_id, "scope": scope_dataset} | ({"rank": rank} if rank != 1 else {})


# Which passes a pool sample `p` (linked by `l`) still needs, given its losses `z` and `o`.
_NEEDS = """z.sample_id IS NULL AS need_zero,
            l.neighbour_id IS NOT NULL AND o.sample_id IS NULL AS need_one"""
_LOSSES = """LEFT JOIN zero_shot_loss z ON z.sample_id = p.sample_id AND z.scorer_id = $scorer_id
            LEFT JOIN one_shot_loss o
                   ON o.sample_id = p.sample_id AND o.scorer_id = $scorer_id AND o.neighbour_id = l.neighbour_id"""
# With IFD: also the response-alone loss `r`; without MIWV no link is read and no one-shot pass is needed.
_RESPONSE_NEED = "r.sample_id IS NULL AS need_response"
_RESPONSE_LOSS = "LEFT JOIN response_loss r ON r.sample_id = p.sample_id AND r.scorer_id = $scorer_id"
_ZERO_ONLY_NEEDS = "z.sample_id IS NULL AS need_zero, false AS need_one"
_ZERO_LOSS = "LEFT JOIN zero_shot_loss z ON z.sample_id = p.sample_id AND z.scorer_id = $scorer_id"


def _needs_sql(metrics: tuple[str, ...]) -> tuple[str, str]:
    """(the need_* columns, the loss joins) for `metrics`; both use `p` (the sample) and, with miwv, `l` (its link)."""
    if "miwv" in metrics:
        needs, losses = _NEEDS, _LOSSES
    else:
        needs, losses = _ZERO_ONLY_NEEDS, _ZERO_LOSS
    if "ifd" in metrics:
        needs, losses = f"{needs}, {_RESPONSE_NEED}", f"{losses}\n            {_RESPONSE_LOSS}"
    return needs, losses


def plan_pool(
    catalog: Catalog,
    scorer_id: int,
    embedder_id: int,
    dataset: str | None = None,
    limit: int | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    pool_ids: np.ndarray | None = None,
    *,
    scope_dataset: str = CATALOG_WIDE,
    rank: int = 1,
) -> PoolPlan:
    """The pool (the current samples, or one dataset's, or those of `pool_ids` among them; the first
    `limit` by sample_id) and what it still needs for `metrics`, with the examples of `scope_dataset`
    (see example_join): the nearest (rank 1), or the rank-th of each sample's listed examples.

    A sample needs its zero-shot pass if it has no zero-shot row for the scorer; with "miwv", its
    one-shot pass if it has a neighbour and no one-shot row for that neighbour; with "ifd", its
    response pass if it has no response_loss row for the scorer. MIWV's passes wait for a link
    (unlinked samples are counted, and planned only for the passes IFD needs); IFD's never do, so
    without "miwv" no link is read. Call check_pool first: an unknown dataset is an empty pool here.
    """
    miwv, ifd = "miwv" in metrics, "ifd" in metrics
    needs, losses = _needs_sql(metrics)
    if miwv:
        link = f"coalesce(l.neighbour_id, {NO_NEIGHBOUR}) AS neighbour_id, l.sample_id IS NOT NULL AS linked"
        link_join = "LEFT " + example_join(rank)
    else:
        link, link_join = f"CAST({NO_NEIGHBOUR} AS BIGINT) AS neighbour_id, true AS linked", ""
    params = {"dataset": dataset, "scorer_id": scorer_id}
    params |= _example_params(embedder_id, scope_dataset, rank) if miwv else {}
    with catalog.read() as conn:
        with db.registered(conn, "_pool", db.id_table(pool_ids)) if pool_ids is not None else nullcontext():
            table = db.query_arrow(
                conn,
                f"""
                WITH p AS ({_pool_sql(limit, pool_ids)})
                SELECT p.sample_id, {link}, {needs}
                FROM p {link_join}
                {losses}
                ORDER BY p.sample_id""",
                params | ({"limit": limit} if limit is not None else {}),
            )
    linked = table["linked"].to_numpy(zero_copy_only=False)
    need_zero = table["need_zero"].to_numpy(zero_copy_only=False)
    need_one = table["need_one"].to_numpy(zero_copy_only=False)
    need_response = table["need_response"].to_numpy(zero_copy_only=False) if ifd else None
    if rank > 1:  # the zero-shot pass is the nearest example's phase (rank 1)
        need_zero = np.zeros_like(need_zero)
    pending = (need_zero & (linked | ifd)) | need_one
    if ifd:
        pending |= need_response
    return PoolPlan(
        samples=len(table),
        not_linked=int((~linked).sum()),
        ids=table["sample_id"].to_numpy()[pending],
        neighbour_ids=table["neighbour_id"].to_numpy()[pending],
        need_zero=need_zero[pending],
        need_one=need_one[pending],
        need_response=need_response[pending] if ifd else None,
    )


def pool_members(
    catalog: Catalog, dataset: str | None = None, limit: int | None = None, pool_ids: np.ndarray | None = None
) -> np.ndarray:
    """The sorted sample ids of the pool plan_pool plans (with the same arguments)."""
    with catalog.read() as conn:
        with db.registered(conn, "_pool", db.id_table(pool_ids)) if pool_ids is not None else nullcontext():
            table = db.query_arrow(
                conn, _pool_sql(limit, pool_ids), {"dataset": dataset} | ({"limit": limit} if limit is not None else {})
            )
    return table["sample_id"].to_numpy()


def _pool_sql(limit: int | None, pool_ids: np.ndarray | None) -> str:
    """SQL: the pool's sample ids, sorted: current members (of $dataset when not NULL), among the
    registered `_pool` when `pool_ids` is given, the first $limit."""
    screen = "AND sample_id IN (SELECT sample_id FROM _pool)" if pool_ids is not None else ""
    return f"""SELECT sample_id FROM sample
               WHERE sample_id IN (SELECT sample_id FROM membership WHERE $dataset IS NULL OR dataset = $dataset)
               {screen}
               ORDER BY sample_id {"LIMIT $limit" if limit is not None else ""}"""


def pending_rows(
    catalog: Catalog,
    scorer_id: int,
    embedder_id: int,
    ids: np.ndarray,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    *,
    scope_dataset: str = CATALOG_WIDE,
    rank: int = 1,
) -> list[PendingSample]:
    """The pending samples among `ids` with their messages and their example's (one unit of work;
    the example as in plan_pool)."""
    miwv, ifd = "miwv" in metrics, "ifd" in metrics
    needs, losses = _needs_sql(metrics)
    if miwv:
        # MIWV alone plans linked samples only; with IFD an unlinked sample still needs its IFD passes.
        link_join = f"""{"LEFT " if ifd else ""}{example_join(rank)}
            LEFT JOIN sample n ON n.sample_id = l.neighbour_id"""
        neighbour = """l.neighbour_id, n.messages AS neighbour_messages, n.instruction AS neighbour_instruction,
                   n.input AS neighbour_input"""
        pending = "z.sample_id IS NULL OR (l.neighbour_id IS NOT NULL AND o.sample_id IS NULL)"
    else:
        link_join = ""
        neighbour = """NULL AS neighbour_id, NULL AS neighbour_messages, NULL AS neighbour_instruction,
                   NULL AS neighbour_input"""
        pending = "z.sample_id IS NULL"
    if ifd:
        pending += " OR r.sample_id IS NULL"
    params = {"scorer_id": scorer_id} | (_example_params(embedder_id, scope_dataset, rank) if miwv else {})
    with catalog.read() as conn, db.registered(conn, "_unit", db.id_table(ids)):
        table = db.query_arrow(
            conn,
            f"""
            SELECT p.sample_id, p.messages, p.instruction, p.input, {neighbour}, {needs}
            FROM _unit u JOIN sample p ON p.sample_id = u.sample_id
            {link_join}
            {losses}
            WHERE {pending}
            ORDER BY p.sample_id""",
            params,
        )
    return [
        PendingSample(
            row["sample_id"],
            messages_of(row["messages"]),
            row["neighbour_id"],
            messages_of(row["neighbour_messages"]) if row["neighbour_messages"] else None,
            row["need_zero"] and rank == 1,
            row["need_one"],
            alpaca_fields_of(row["instruction"], row["input"]),
            alpaca_fields_of(row["neighbour_instruction"], row["neighbour_input"]),
            row.get("need_response", False),
        )
        for row in table.to_pylist()
    ]


def messages_of(stored: list[dict]) -> Messages:
    """A sample's messages as stored ([{"role", "content"}, ...]) -> Messages."""
    return tuple((m["role"], m["content"]) for m in stored)


def alpaca_fields_of(instruction: str | None, input: str | None) -> AlpacaFields | None:
    """(instruction, input) of an Alpaca-shaped sample, as the scorer is given them; None for chats."""
    return None if instruction is None else (instruction, input or "")


def start_run(
    catalog: Catalog,
    scorer_id: int,
    embedder_id: int,
    device: str,
    pool: int,
    samples: int,
    workers: int,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    run_pool: RunPool | None = None,
    *,
    scope_dataset: str = CATALOG_WIDE,
    examples: int = 1,
) -> int:
    """Record the start of a score run on `workers` processes, what it computes (`metrics`) and, for a
    screened pool, the screen, the condition and the calibration sample (its samples as rows of
    score_calibration); returns its id."""
    with catalog.write() as conn:
        run_id = db.next_id(conn, "score_run", "run_id")
        db.execute(
            conn,
            """INSERT INTO score_run (run_id, scorer_id, embedder_id, device, pool, samples, passes,
                                      tokens_run, started_at, workers, metrics, pool_selection_id, pool_where,
                                      calibrate_percent, calibrate_seed, scope_dataset, examples)
               VALUES ($run_id, $scorer_id, $embedder_id, $device, $pool, $samples, 0, 0, $now, $workers, $metrics,
                       $selection_id, $where, $calibrate_percent, $calibrate_seed, $scope, $examples)""",
            {
                "scope": scope_dataset,
                "examples": examples,
                "run_id": run_id,
                "scorer_id": scorer_id,
                "embedder_id": embedder_id,
                "device": device,
                "pool": pool,
                "samples": samples,
                "now": db.utcnow(),
                "workers": workers,
                "metrics": ",".join(metrics),
                "selection_id": run_pool.selection_id if run_pool else None,
                "where": run_pool.where if run_pool else None,
                "calibrate_percent": run_pool.calibrate_percent if run_pool else None,
                "calibrate_seed": run_pool.calibrate_seed if run_pool else None,
            },
        )
        if run_pool is not None and len(run_pool.calibration_ids):
            ids = db.id_table(run_pool.calibration_ids)
            rows = ids.append_column("run_id", pa.array([run_id] * len(ids), pa.int32()))
            db.insert_arrow(conn, "score_calibration", rows)
    return run_id


def save_results(
    catalog: Catalog, scorer_id: int, run_id: int, results: list[PassResult], tokens_run: int, worker: WorkerRow
) -> None:
    """Write one batch's (or unit's) results, the run's progress, the worker's share and the
    samples' current scores in one transaction; rows already there are kept (an example's
    zero-shot pass may be recomputed after an earlier run, or another unit, stored it).
    Response-alone rows feed no current score (score_current is MIWV's), so they refresh nothing."""
    now = db.utcnow()
    progress = {"passes": len(results), "tokens_run": tokens_run, "run_id": run_id}
    with catalog.write() as conn:
        db.execute(
            conn,
            """UPDATE score_run SET passes = passes + $passes, tokens_run = tokens_run + $tokens_run
                            WHERE run_id = $run_id""",
            progress,
        )
        db.execute(
            conn,
            """INSERT INTO score_run_worker (run_id, worker, node_id, device, passes, tokens_run)
               VALUES ($run_id, $worker, $node_id, $device, $passes, $tokens_run)
               ON CONFLICT DO UPDATE SET passes = passes + excluded.passes,
                                         tokens_run = tokens_run + excluded.tokens_run""",
            progress | {"worker": worker.worker, "node_id": worker.node_id, "device": worker.device},
        )
        for kind, table in LOSS_TABLES.items():
            rows = [r for r in results if r.kind == kind]
            if not rows:
                continue
            columns = {
                "sample_id": pa.array([r.sample_id for r in rows], pa.int64()),
                "scorer_id": pa.array([scorer_id] * len(rows), pa.int32()),
                "status": pa.array([r.status for r in rows], pa.string()),
                "sum_nll": pa.array([r.sum_nll for r in rows], pa.float64()),
                "n_response_tokens": pa.array([r.n_response_tokens for r in rows], pa.int32()),
                "loss": pa.array(
                    [r.sum_nll / r.n_response_tokens if r.status == "ok" else None for r in rows], pa.float64()
                ),
                "n_tokens": pa.array([r.n_tokens for r in rows], pa.int32()),
                "run_id": pa.array([run_id] * len(rows), pa.int32()),
                "computed_at": pa.array([now] * len(rows), pa.timestamp("us")),
            }
            if kind == PassKind.ONE:
                columns["neighbour_id"] = pa.array([r.neighbour_id for r in rows], pa.int64())
                columns["example_truncated"] = pa.array([r.example_truncated for r in rows], pa.bool_())
            db.insert_arrow(conn, table, pa.table(columns), keep_existing=True)
        touched = [r.sample_id for r in results if r.kind != PassKind.RESPONSE]
        if touched:
            current_scores.refresh(conn, np.array(touched, np.int64), scorer_id=scorer_id)


def finish_run(catalog: Catalog, run_id: int) -> None:
    with catalog.write() as conn:
        db.execute(
            conn,
            "UPDATE score_run SET finished_at = $now WHERE run_id = $run_id",
            {"now": db.utcnow(), "run_id": run_id},
        )
