"""Scorers and their losses: what still needs a pass, and each batch's results written in one transaction."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from catalog import db
from catalog.datasets import require_dataset
from catalog.errors import UserError
from catalog.store import Catalog

Messages = tuple[tuple[str, str], ...]
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


@dataclass(frozen=True)
class PassResult:
    """One pass's outcome; losses are None unless status is "ok"."""

    kind: str  # "zero" or "one"
    sample_id: int
    neighbour_id: int | None
    status: str  # "ok", "too_long", "too_long_one_shot"
    sum_nll: float | None = None
    n_response_tokens: int | None = None
    n_tokens: int | None = None  # the whole sequence (prompt + response)
    example_truncated: bool = False


@dataclass(frozen=True)
class Pool:
    """The samples a score run covers, and which of them can be scored now."""

    samples: int
    not_linked: int  # no neighbour link for the embedder yet (run `embed`)
    pending: list[PendingSample]


def register_scorer(
    catalog: Catalog, model: str, source: str, fingerprint: str, template: TemplateKey, max_length: int, dtype: str
) -> ScorerRow:
    """The scorer for this model file, template (name, revision, hash), max length and dtype (made on first use)."""
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
            return ScorerRow(*rows[0])
        scorer_id = db.next_id(conn, "scorer", "scorer_id")
        db.execute(
            conn,
            """INSERT INTO scorer (scorer_id, model, source, fingerprint, template, max_length, dtype, created_at,
                                   template_revision, template_hash)
            VALUES ($scorer_id, $model, $source, $fingerprint, $template, $max_length, $dtype, $now,
                    $template_revision, $template_hash)""",
            {**key, "scorer_id": scorer_id, "model": model, "source": source, "now": db.utcnow()},
        )
    return ScorerRow(scorer_id, model, source, template.name, max_length, dtype, template.revision, template.digest)


_SCORER_COLUMNS = "scorer_id, model, source, template, max_length, dtype, template_revision, template_hash"


def find_scorer(catalog: Catalog, model: str, scorer_id: int | None = None) -> ScorerRow:
    """The scorer of `model` (its newest, unless `scorer_id` picks one); UserError if there is none."""
    with catalog.read() as conn:
        rows = [
            ScorerRow(*r)
            for r in db.execute(
                conn,
                f"SELECT {_SCORER_COLUMNS} FROM scorer WHERE model = $model ORDER BY scorer_id DESC",
                {"model": model},
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


def pending_samples(
    catalog: Catalog, scorer_id: int, embedder_id: int, dataset: str | None = None, limit: int | None = None
) -> Pool:
    """The pool (all samples, or one dataset; the first `limit` by sample_id) and what it still needs.

    A sample needs its zero-shot pass if it has no zero-shot row for the scorer, and its
    one-shot pass if it has a neighbour and no one-shot row for that neighbour.
    """
    pool_params = {"dataset": dataset} | ({"limit": limit} if limit is not None else {})
    with catalog.read() as conn:
        require_dataset(conn, dataset)
        db.execute(
            conn,
            f"""
            CREATE TEMP TABLE pool AS
            SELECT sample_id, messages, instruction, input FROM sample
            WHERE $dataset IS NULL OR sample_id IN (SELECT sample_id FROM membership WHERE dataset = $dataset)
            ORDER BY sample_id {"LIMIT $limit" if limit is not None else ""}""",
            pool_params,
        )
        samples, not_linked = db.execute(
            conn,
            """
            SELECT count(*), count(*) FILTER (WHERE l.sample_id IS NULL)
            FROM pool p LEFT JOIN neighbour_link l ON l.sample_id = p.sample_id AND l.embedder_id = $embedder_id""",
            {"embedder_id": embedder_id},
        )[0]
        table = db.query_arrow(
            conn,
            """
            SELECT p.sample_id, p.messages, p.instruction, p.input, l.neighbour_id, n.messages AS neighbour_messages,
                   n.instruction AS neighbour_instruction, n.input AS neighbour_input,
                   z.sample_id IS NULL AS need_zero,
                   l.neighbour_id IS NOT NULL AND o.sample_id IS NULL AS need_one
            FROM pool p
            JOIN neighbour_link l ON l.sample_id = p.sample_id AND l.embedder_id = $embedder_id
            LEFT JOIN sample n ON n.sample_id = l.neighbour_id
            LEFT JOIN zero_shot_loss z ON z.sample_id = p.sample_id AND z.scorer_id = $scorer_id
            LEFT JOIN one_shot_loss o
                   ON o.sample_id = p.sample_id AND o.scorer_id = $scorer_id AND o.neighbour_id = l.neighbour_id
            WHERE z.sample_id IS NULL OR (l.neighbour_id IS NOT NULL AND o.sample_id IS NULL)
            ORDER BY p.sample_id""",
            {"scorer_id": scorer_id, "embedder_id": embedder_id},
        )
        db.execute(conn, "DROP TABLE pool")
    pending = [
        PendingSample(
            row["sample_id"],
            _messages(row["messages"]),
            row["neighbour_id"],
            _messages(row["neighbour_messages"]) if row["neighbour_messages"] else None,
            row["need_zero"],
            row["need_one"],
            _fields(row["instruction"], row["input"]),
            _fields(row["neighbour_instruction"], row["neighbour_input"]),
        )
        for row in table.to_pylist()
    ]
    return Pool(samples, not_linked, pending)


def _messages(rows: list[dict]) -> Messages:
    return tuple((m["role"], m["content"]) for m in rows)


def _fields(instruction: str | None, input: str | None) -> AlpacaFields | None:
    return None if instruction is None else (instruction, input or "")


def start_run(catalog: Catalog, scorer_id: int, embedder_id: int, device: str, pool: int, samples: int) -> int:
    """Record the start of a score run; returns its id."""
    with catalog.write() as conn:
        run_id = db.next_id(conn, "score_run", "run_id")
        db.execute(
            conn,
            """INSERT INTO score_run (run_id, scorer_id, embedder_id, device, pool, samples, passes,
                                                   tokens_run, started_at)
                            VALUES ($run_id, $scorer_id, $embedder_id, $device, $pool, $samples, 0, 0, $now)""",
            {
                "run_id": run_id,
                "scorer_id": scorer_id,
                "embedder_id": embedder_id,
                "device": device,
                "pool": pool,
                "samples": samples,
                "now": db.utcnow(),
            },
        )
    return run_id


def save_results(catalog: Catalog, scorer_id: int, run_id: int, results: list[PassResult], tokens_run: int) -> None:
    """Write one batch's results and the run's progress in one transaction; rows already there are
    kept (an example's zero-shot pass may be recomputed after an earlier run stored it)."""
    now = db.utcnow()
    with catalog.write() as conn:
        db.execute(
            conn,
            """UPDATE score_run SET passes = passes + $passes, tokens_run = tokens_run + $tokens_run
                            WHERE run_id = $run_id""",
            {"passes": len(results), "tokens_run": tokens_run, "run_id": run_id},
        )
        for kind, table in (("zero", "zero_shot_loss"), ("one", "one_shot_loss")):
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
            if kind == "one":
                columns["neighbour_id"] = pa.array([r.neighbour_id for r in rows], pa.int64())
                columns["example_truncated"] = pa.array([r.example_truncated for r in rows], pa.bool_())
            db.insert_arrow(conn, table, pa.table(columns), keep_existing=True)


def finish_run(catalog: Catalog, run_id: int) -> None:
    with catalog.write() as conn:
        db.execute(
            conn,
            "UPDATE score_run SET finished_at = $now WHERE run_id = $run_id",
            {"now": db.utcnow(), "run_id": run_id},
        )
