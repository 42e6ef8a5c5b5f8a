"""Training runs on recorded selections (train_run) and their loss curves (train_loss): every SQL
statement of `train`.

A run is identified by what decides its result: the selection, the base model's fingerprint, the
template (name and hash), the method, the hyperparameters (JSON, with a hash of the sample ids
trained on) and the seed. `train` with the same identity finds the run: an unfinished one is
resumed from its last checkpoint, a finished one is reported and not redone.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog import db
from catalog.errors import UserError
from catalog.pools import listed_selections
from catalog.score import AlpacaFields, Messages, alpaca_fields_of, messages_of
from catalog.store import Catalog

RUNS_FOLDER = "runs"  # runs/<run_id>/ under the catalog: the trainer's output_dir


@dataclass(frozen=True)
class Member:
    """A current member of a selection, as the scorer is given it."""

    sample_id: int
    messages: Messages
    fields: AlpacaFields | None


@dataclass(frozen=True)
class RunKey:
    """What makes two runs the same run."""

    selection_id: int
    base_fingerprint: str
    template: str
    template_hash: str
    method: str  # lora | full
    hyperparameters: str  # JSON, keys sorted
    seed: int


@dataclass(frozen=True)
class RunRow:
    run_id: int
    output_path: str  # relative to the catalog folder
    finished: bool


def selection_members(catalog: Catalog, selection_id: int) -> list[Member]:
    """The current members of selection `selection_id` in rank order; UserError naming the
    selections there are when it is unknown or none of its members is a current sample."""
    catalog.require()
    with catalog.read() as conn:
        known = db.execute(conn, "SELECT 1 FROM selection WHERE selection_id = $id", {"id": selection_id})
        rows = db.records(
            conn,
            """SELECT s.sample_id, s.messages, s.instruction, s.input
               FROM selection_member m JOIN sample s USING (sample_id)
               WHERE m.selection_id = $id AND s.sample_id IN (SELECT sample_id FROM membership)
               ORDER BY m.rank, s.sample_id""",
            {"id": selection_id},
        )
        if not known or not rows:
            problem = f"selection {selection_id} has no current member" if known else f"no selection {selection_id}"
            raise UserError(f"{problem}; {listed_selections(conn)}")
    return [
        Member(row["sample_id"], messages_of(row["messages"]), alpaca_fields_of(row["instruction"], row["input"]))
        for row in rows
    ]


def find_run(catalog: Catalog, key: RunKey) -> RunRow | None:
    """The newest run with this identity (finished or not), None when there is none."""
    where = " AND ".join(f"{column} = ${column}" for column in key.__dataclass_fields__)
    with catalog.read() as conn:
        rows = db.execute(
            conn,
            f"SELECT run_id, output_path, finished_at IS NOT NULL FROM train_run WHERE {where} ORDER BY run_id DESC",
            vars(key),
        )
    return RunRow(*rows[0]) if rows else None


def start_run(catalog: Catalog, key: RunKey, model: str, device: str, samples: int) -> RunRow:
    """Record a new run; its output folder is runs/<run_id> under the catalog."""
    with catalog.write() as conn:
        run_id = db.next_id(conn, "train_run", "run_id")
        output_path = f"{RUNS_FOLDER}/{run_id}"
        db.execute(
            conn,
            """INSERT INTO train_run (run_id, selection_id, model, base_fingerprint, template, template_hash, method,
                                      hyperparameters, seed, device, samples, output_path, started_at)
               VALUES ($run_id, $selection_id, $model, $base_fingerprint, $template, $template_hash, $method,
                       $hyperparameters, $seed, $device, $samples, $output_path, $now)""",
            vars(key)
            | {
                "run_id": run_id,
                "model": model,
                "device": device,
                "samples": samples,
                "output_path": output_path,
                "now": db.utcnow(),
            },
        )
    return RunRow(run_id, output_path, False)


def forget_losses_after(catalog: Catalog, run_id: int, step: int) -> None:
    """Drop the loss rows past `step` (the checkpoint a resumed run restarts from): the steps after it
    run again and log again."""
    with catalog.write() as conn:
        db.execute(
            conn, "DELETE FROM train_loss WHERE run_id = $run_id AND step > $step", {"run_id": run_id, "step": step}
        )


def record_loss(
    catalog: Catalog, run_id: int, step: int, epoch: float | None, loss: float, learning_rate: float | None
) -> None:
    """One logging step of the loss curve, in its own transaction."""
    with catalog.write() as conn:
        db.execute(
            conn,
            """INSERT INTO train_loss (run_id, step, epoch, loss, learning_rate)
               VALUES ($run_id, $step, $epoch, $loss, $learning_rate)""",
            {"run_id": run_id, "step": step, "epoch": epoch, "loss": loss, "learning_rate": learning_rate},
        )


def finish_run(catalog: Catalog, run_id: int, output_fingerprint: str) -> None:
    with catalog.write() as conn:
        db.execute(
            conn,
            "UPDATE train_run SET output_fingerprint = $fingerprint, finished_at = $now WHERE run_id = $run_id",
            {"fingerprint": output_fingerprint, "now": db.utcnow(), "run_id": run_id},
        )


def last_loss(catalog: Catalog, run_id: int) -> tuple[int, float | None]:
    """(the last logged step, its loss) of a run; (0, None) before its first log."""
    with catalog.read() as conn:
        rows = db.execute(
            conn,
            "SELECT step, loss FROM train_loss WHERE run_id = $run_id ORDER BY step DESC LIMIT 1",
            {"run_id": run_id},
        )
    return rows[0] if rows else (0, None)


def list_runs(catalog: Catalog) -> list[dict]:
    """Every run, newest first, with its last logged step and loss."""
    with catalog.read() as conn:
        return db.records(
            conn,
            """SELECT r.run_id, r.selection_id, r.model, r.template, r.method, r.seed, r.device, r.samples,
                      r.output_path, r.started_at, r.finished_at, l.step AS steps, l.loss AS final_loss
               FROM train_run r
               LEFT JOIN (SELECT run_id, arg_max(step, step) AS step, arg_max(loss, step) AS loss
                          FROM train_loss GROUP BY run_id) l USING (run_id)
               ORDER BY r.run_id DESC""",
        )
