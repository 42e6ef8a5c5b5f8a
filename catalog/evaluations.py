"""Rows that evaluate training runs: generations, reference losses and pairwise judgements.

Every row is keyed so a rerun finds what is already there: a generation by (run, prompt,
settings), a reference loss by (run, prompt), a judgement by (run_a, run_b, prompt, order, judge).
A baseline (the base model, no fine-tuning) is a train_run row of method "base" and no selection
(selection_id 0), so it is evaluated, judged and listed like any run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from catalog.db import execute, insert_arrow, next_id, records, utcnow
from catalog.errors import UserError
from catalog.store import Catalog

BASE_METHOD = "base"
NO_SELECTION = 0  # train_run.selection_id of a baseline


@dataclass(frozen=True)
class Run:
    """What evaluating a train_run needs."""

    run_id: int
    selection_id: int
    model: str
    template: str
    method: str  # lora | full | base
    output_path: str


def find_runs(catalog: Catalog, run_ids: list[int]) -> list[Run]:
    """The runs, in the order asked; UserError naming unknown or unfinished ones."""
    with catalog.read() as conn:
        rows = records(
            conn,
            "SELECT run_id, selection_id, model, template, method, output_path, finished_at FROM train_run "
            "WHERE run_id IN (SELECT unnest($ids))",
            {"ids": run_ids},
        )
    found = {row["run_id"]: row for row in rows}
    unknown = [str(i) for i in run_ids if i not in found]
    if unknown:
        raise UserError(f"no training run {', '.join(unknown)} in {catalog.path}: see `python cli.py experiments`")
    running = [str(i) for i in run_ids if found[i]["finished_at"] is None]
    if running:
        raise UserError(f"training run {', '.join(running)} has not finished: run `python cli.py train` again first")
    return [Run(**{k: v for k, v in found[i].items() if k != "finished_at"}) for i in run_ids]


def base_run(catalog: Catalog, model: str, fingerprint: str, template: str, template_hash: str, path: str) -> int:
    """The baseline run of `model` under `template`: found, else recorded now."""
    with catalog.write() as conn:
        found = execute(
            conn,
            "SELECT run_id FROM train_run WHERE method = $m AND base_fingerprint = $f AND template_hash = $t",
            {"m": BASE_METHOD, "f": fingerprint, "t": template_hash},
        )
        if found:
            return found[0][0]
        run_id = next_id(conn, "train_run", "run_id")
        now = utcnow()
        row = dict(
            run_id=run_id, selection_id=NO_SELECTION, model=model, base_fingerprint=fingerprint, template=template,
            template_hash=template_hash, method=BASE_METHOD, hyperparameters="{}", seed=0, device="", samples=0,
            output_path=path, output_fingerprint=fingerprint, started_at=now, finished_at=now,
        )  # fmt: skip
        insert_arrow(conn, "train_run", pa.Table.from_pylist([row]))
        return run_id


def settings_json(settings: dict[str, Any]) -> str:
    """The generation settings as stored: canonical JSON, so equal settings are one key."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def missing_generations(catalog: Catalog, run_id: int, prompt_ids: list[int], settings: str) -> list[int]:
    """Which of `prompt_ids` have no generation of the run under `settings` (in the order given)."""
    with catalog.read() as conn:
        done = execute(
            conn,
            "SELECT prompt_id FROM generation WHERE run_id = $r AND settings = $s",
            {"r": run_id, "s": settings},
        )
    have = {row[0] for row in done}
    return [p for p in prompt_ids if p not in have]


def store_generations(catalog: Catalog, run_id: int, settings: str, texts: list[tuple[int, str, int]]) -> None:
    """One batch of (prompt_id, text, n_tokens), committed together."""
    now = utcnow()
    rows = [
        dict(run_id=run_id, prompt_id=p, settings=settings, text=t, n_tokens=n, created_at=now) for p, t, n in texts
    ]
    _insert(catalog, "generation", rows)


def generations(catalog: Catalog, run_ids: list[int], prompt_ids: list[int], settings: str) -> dict:
    """{(run_id, prompt_id): text} of the runs' generations under `settings`."""
    with catalog.read() as conn:
        rows = execute(
            conn,
            "SELECT run_id, prompt_id, text FROM generation WHERE settings = $s "
            "AND run_id IN (SELECT unnest($r)) AND prompt_id IN (SELECT unnest($p))",
            {"s": settings, "r": run_ids, "p": prompt_ids},
        )
    return {(run, prompt): text for run, prompt, text in rows}


def missing_reference_losses(catalog: Catalog, run_id: int, prompt_ids: list[int]) -> list[int]:
    """Which of `prompt_ids` have no reference loss under the run."""
    with catalog.read() as conn:
        done = {
            row[0] for row in execute(conn, "SELECT prompt_id FROM reference_loss WHERE run_id = $r", {"r": run_id})
        }
    return [p for p in prompt_ids if p not in done]


def store_reference_losses(catalog: Catalog, run_id: int, losses: list[tuple[int, float | None, int | None]]) -> None:
    """(prompt_id, mean token NLL or None when too long, response tokens), committed together."""
    now = utcnow()
    rows = [dict(run_id=run_id, prompt_id=p, loss=loss, n_tokens=n, created_at=now) for p, loss, n in losses]
    _insert(catalog, "reference_loss", rows)


def mean_reference_loss(catalog: Catalog, run_id: int, prompt_ids: list[int]) -> float | None:
    """The run's mean reference loss over `prompt_ids` (those that fit)."""
    with catalog.read() as conn:
        return execute(
            conn,
            "SELECT avg(loss) FROM reference_loss WHERE run_id = $r AND prompt_id IN (SELECT unnest($p))",
            {"r": run_id, "p": prompt_ids},
        )[0][0]


def judged(catalog: Catalog, judge: str, settings: str) -> set[tuple[int, int, int, bool]]:
    """(run_a, run_b, prompt_id, a_first) of every judgement `judge` gave on generations of `settings`."""
    with catalog.read() as conn:
        rows = execute(
            conn,
            "SELECT run_a, run_b, prompt_id, a_first FROM judgement WHERE judge = $j AND settings = $s",
            {"j": judge, "s": settings},
        )
    return {tuple(row) for row in rows}


def store_judgements(catalog: Catalog, rows: list[dict[str, Any]]) -> None:
    """Judgements (each a whole row: verdict and raw answer), committed together."""
    now = utcnow()
    _insert(catalog, "judgement", [{**row, "created_at": now} for row in rows])


def pair_outcomes(catalog: Catalog, run_ids: list[int], prompt_ids: list[int], judge: str, settings: str) -> list[dict]:
    """Per pair of the runs: judgements, wins / ties / losses of run_a over both orders, and the
    paper's pairwise winning score 1 + (wins - losses) / n (above 1: run_a is better)."""
    with catalog.read() as conn:
        return records(
            conn,
            """
            SELECT run_a, run_b, count(*) AS n,
                   count(*) FILTER (verdict = 'a') AS wins,
                   count(*) FILTER (verdict = 'tie') AS ties,
                   count(*) FILTER (verdict = 'b') AS losses,
                   1 + (count(*) FILTER (verdict = 'a') - count(*) FILTER (verdict = 'b')) / count(*) AS winning_score
            FROM judgement
            WHERE judge = $j AND settings = $s AND run_a IN (SELECT unnest($r)) AND run_b IN (SELECT unnest($r))
              AND prompt_id IN (SELECT unnest($p))
            GROUP BY run_a, run_b ORDER BY run_a, run_b
            """,
            {"j": judge, "s": settings, "r": run_ids, "p": prompt_ids},
        )


def _insert(catalog: Catalog, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert whole rows in one transaction (prompt ids as int64)."""
    if not rows:
        return
    data = pa.Table.from_pylist(rows)
    data = data.set_column(data.schema.get_field_index("prompt_id"), "prompt_id", data["prompt_id"].cast(pa.int64()))
    with catalog.write() as conn:
        insert_arrow(conn, table, data)
