"""Samples leave datasets, and the catalog forgets: removal, replacement, purge, and their history.

A membership row that ends moves to `membership_left` with the change that ended it. A sample
left in no dataset is retired: its text, vectors and losses stay (a later ingest of the same
content brings it back without recomputing anything), but it has no neighbour link and no
current score, and no link points to it: a sample whose example was retired loses its link, so
the next neighbours step (`embed` or `neighbours`) finds it a new one among the current samples,
exactly as it links a new sample. `purge` deletes retired samples for good: DuckDB rows in one
transaction, then their vectors in LanceDB, a step that the next write command finishes if this
one was stopped (`catalog_change.vectors_done`).

Every change of membership is one transaction with its `catalog_change` row and one
`dataset_version` row per dataset it touched.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from catalog import db
from catalog.datasets import require_dataset
from catalog.errors import ArgumentError, UserError
from catalog.store import Catalog

LEAVING = pa.schema([("sample_id", pa.int64()), ("dataset", pa.string())])


@dataclass(frozen=True)
class Removal:
    """What a removal (or the removal part of a replace) did, or with dry_run would do."""

    dry_run: bool
    change_id: int | None  # None for a dry run, or when nothing matched
    memberships_out: int
    samples_retired: int
    links_to_repair: int  # current samples whose example was retired: the next `embed` links them anew
    scores_stale: int  # their current scores, stale until `score` runs their one new one-shot pass
    samples_purged: int
    datasets: list[dict[str, Any]] = field(default_factory=list)  # dataset, rows_out, members_after, version
    message: str | None = None  # said instead of an error: nothing matched
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_change(conn: sa.Connection, kind: str, detail: str, ingest_id: int | None = None) -> int:
    """A new catalog_change row; returns its id."""
    change_id = db.next_id(conn, "catalog_change", "change_id")
    db.execute(
        conn,
        """INSERT INTO catalog_change (change_id, kind, ingest_id, detail, created_at, vectors_done)
           VALUES ($change_id, $kind, $ingest_id, $detail, $now, true)""",
        {"change_id": change_id, "kind": kind, "ingest_id": ingest_id, "detail": detail, "now": db.utcnow()},
    )
    return change_id


def record_versions(conn: sa.Connection, change_id: int, rows_in: dict[str, int], rows_out: dict[str, int]) -> dict:
    """One dataset_version per dataset in `rows_in` or `rows_out`; returns {dataset: version}."""
    versions = {}
    for dataset in sorted(set(rows_in) | set(rows_out)):
        version = db.execute(
            conn, "SELECT coalesce(max(version), 0) + 1 FROM dataset_version WHERE dataset = $d", {"d": dataset}
        )[0][0]
        members = db.execute(conn, "SELECT count(*) FROM membership WHERE dataset = $d", {"d": dataset})[0][0]
        db.execute(
            conn,
            """INSERT INTO dataset_version (dataset, version, change_id, rows_in, rows_out, members)
               VALUES ($dataset, $version, $change_id, $rows_in, $rows_out, $members)""",
            {
                "dataset": dataset,
                "version": version,
                "change_id": change_id,
                "rows_in": rows_in.get(dataset, 0),
                "rows_out": rows_out.get(dataset, 0),
                "members": members,
            },
        )
        versions[dataset] = version
    return versions


# A row `l` with a scope_dataset whose sample `{s}` leaves that scope: a leaving member of the dataset,
# or (catalog-wide) a retired sample. Needs the registered tables _leaving and _retired.
_LEAVES_SCOPE = """(CASE WHEN l.scope_dataset = '' THEN {s} IN (SELECT sample_id FROM _retired)
          ELSE EXISTS (SELECT 1 FROM _leaving v WHERE v.sample_id = {s} AND v.dataset = l.scope_dataset) END)"""


@dataclass(frozen=True)
class Leaving:
    """The membership rows that leave, and what their leaving does."""

    leaving: pa.Table  # (sample_id, dataset): current membership rows
    retired: np.ndarray  # samples left in no dataset
    orphans: pa.Table  # (sample_id, embedder_id, scope_dataset): links staying in a scope their neighbour leaves
    scores_stale: int
    rows_out: dict[str, int]


def plan_leaving(conn: sa.Connection, candidates: pa.Table) -> Leaving:
    """Which of `candidates` (sample_id, dataset) are current memberships, and what leaving costs."""
    with db.registered(conn, "_candidates", candidates):
        leaving = db.query_arrow(
            conn,
            """SELECT DISTINCT m.sample_id, m.dataset FROM membership m
               SEMI JOIN _candidates c ON c.sample_id = m.sample_id AND c.dataset = m.dataset
               ORDER BY ALL""",
        ).cast(LEAVING)
    with db.registered(conn, "_leaving", leaving):
        retired = db.query_arrow(
            conn,
            """SELECT m.sample_id FROM membership m
               LEFT JOIN _leaving l ON l.sample_id = m.sample_id AND l.dataset = m.dataset
               WHERE m.sample_id IN (SELECT sample_id FROM _leaving)
               GROUP BY m.sample_id HAVING count(l.sample_id) = count(*) ORDER BY 1""",
        )["sample_id"].to_numpy()
        rows_out = dict(db.execute(conn, "SELECT dataset, count(*) FROM _leaving GROUP BY dataset"))
    with db.registered(conn, "_leaving", leaving), db.registered(conn, "_retired", db.id_table(retired)):
        orphans = db.query_arrow(
            conn,
            f"""SELECT sample_id, embedder_id, scope_dataset FROM neighbour_link l
               WHERE {_LEAVES_SCOPE.format(s="l.neighbour_id")} AND NOT {_LEAVES_SCOPE.format(s="l.sample_id")}""",
        )
        with db.registered(conn, "_orphans", orphans):
            stale = db.execute(
                conn,
                "SELECT count(*) FROM score_current SEMI JOIN _orphans USING (sample_id, embedder_id, scope_dataset)",
            )[0][0]
    return Leaving(leaving, retired, orphans, stale, rows_out)


def leave(conn: sa.Connection, plan: Leaving, change_id: int) -> Leaving:
    """Carry out `plan` (made in this transaction): end its memberships, retire samples left in no
    dataset, drop their links, the links that point at them and the current scores those links
    carried. The caller records the dataset versions."""
    with (
        db.registered(conn, "_leaving", plan.leaving),
        db.registered(conn, "_retired", db.id_table(plan.retired)),
        db.registered(conn, "_orphans", plan.orphans),
    ):
        db.execute(
            conn,
            """INSERT INTO membership_left (sample_id, dataset, change_id, ingest_id, source_row)
               SELECT m.sample_id, m.dataset, $change_id, m.ingest_id, m.source_row FROM membership m
               SEMI JOIN _leaving l ON l.sample_id = m.sample_id AND l.dataset = m.dataset""",
            {"change_id": change_id},
        )
        db.execute(
            conn,
            """DELETE FROM membership m USING _leaving l
               WHERE m.sample_id = l.sample_id AND m.dataset = l.dataset""",
        )
        for table in ("score_current", "neighbour_link"):  # links (and their scores) of leavers and to leavers
            db.execute(
                conn,
                f"""DELETE FROM {table} l WHERE {_LEAVES_SCOPE.format(s="l.sample_id")}
                       OR EXISTS (SELECT 1 FROM _orphans o WHERE o.sample_id = l.sample_id
                                  AND o.embedder_id = l.embedder_id AND o.scope_dataset = l.scope_dataset)""",
            )
        db.execute(conn, f"DELETE FROM example_list l WHERE {_LEAVES_SCOPE.format(s='l.sample_id')}")
    return plan


def remove(
    catalog: Catalog,
    *,
    dataset: str | None = None,
    where: str | None = None,
    ids: str | Path | None = None,
    everything: bool = False,
    purge: bool = False,
    dry_run: bool = False,
) -> Removal:
    """Take samples out of datasets: all of `dataset`, or the rows matching `where` (a condition on
    the `samples` view) or listed in the file `ids` (one sample_id per line), from `dataset` if
    given, else from every dataset. `everything` removes all samples (and is required when the
    selectors match them all). `purge` then deletes every retired sample for good; alone, it purges
    the samples retired earlier. `dry_run` reports and writes nothing."""
    started = time.monotonic()
    selectors = [name for name, value in (("where", where), ("ids", ids)) if value is not None]
    if not selectors and dataset is None and not everything and not purge:
        raise ArgumentError("say what to remove: {0}, {1}, {2} or {3}", "dataset", "where", "ids", "everything")
    if everything and (selectors or dataset is not None):
        raise ArgumentError("{0} removes every sample: give it alone", "everything")
    catalog.require()
    wanted_ids = _ids_from_file(Path(ids)) if ids is not None else None
    matched = _matching(catalog, where) if where is not None else None
    detail = _detail(dataset, where, ids, everything, purge)
    if dry_run:
        return _remove(catalog, dataset, wanted_ids, matched, everything, purge, True, detail, started)
    with catalog.job("remove"):
        _delete_purged_vectors(catalog)
        return _remove(catalog, dataset, wanted_ids, matched, everything, purge, False, detail, started)


def _remove(catalog, dataset, wanted_ids, matched, everything, purge, dry_run, detail, started) -> Removal:
    selected = wanted_ids is not None or matched is not None or dataset is not None or everything
    with catalog.read() if dry_run else catalog.write() as conn:
        require_dataset(conn, dataset)
        candidates = _candidates(conn, dataset, wanted_ids, matched, everything)
        plan = plan_leaving(conn, candidates)
        if selected:
            _refuse_removing_everything(conn, plan, everything, dry_run)
        retired_before = db.execute(conn, _RETIRED_COUNT)[0][0] if purge else 0
        to_purge = len(plan.retired) + retired_before if purge else 0
        if plan.leaving.num_rows == 0 and to_purge == 0:
            return Removal(dry_run, None, 0, 0, 0, 0, 0, message=_nothing(detail), seconds=_since(started))
        if dry_run:
            return _summary(plan, None, to_purge, _dataset_effects(conn, plan.rows_out, None), started)
        change_id = record_change(conn, "purge" if purge and not plan.leaving.num_rows else "remove", detail)
        leave(conn, plan, change_id)
        versions = record_versions(conn, change_id, {}, plan.rows_out)
        datasets = _dataset_effects(conn, plan.rows_out, versions)
        purged = _purge_rows(conn, change_id) if purge else 0
    if purge:
        _checkpoint(catalog)
        _delete_purged_vectors(catalog)
    return _summary(plan, change_id, purged, datasets, started)


def _summary(plan: Leaving, change_id: int | None, purged: int, datasets: list[dict], started: float) -> Removal:
    """The Removal of `plan`: written as `change_id`, or a dry run when that is None."""
    return Removal(
        dry_run=change_id is None,
        change_id=change_id,
        memberships_out=plan.leaving.num_rows,
        samples_retired=len(plan.retired),
        links_to_repair=plan.orphans.num_rows,
        scores_stale=plan.scores_stale,
        samples_purged=purged,
        datasets=datasets,
        seconds=_since(started),
    )


_RETIRED_COUNT = "SELECT count(*) FROM sample WHERE sample_id NOT IN (SELECT sample_id FROM membership)"


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _nothing(detail: str) -> str:
    return f"nothing to remove: no current sample matches {detail}"


def _detail(dataset: str | None, where: str | None, ids, everything: bool, purge: bool) -> str:
    parts = []
    if everything:
        parts.append("every sample")
    if dataset is not None:
        parts.append(f"dataset {dataset}")
    if where is not None:
        parts.append(f"where {where}")
    if ids is not None:
        parts.append(f"ids in {Path(ids).name}")
    if purge:
        parts.append("purge" if parts else "purge of retired samples")
    return ", ".join(parts)


def _ids_from_file(path: Path) -> np.ndarray:
    """Sample ids, one per line (blank lines and # comments skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise UserError(f"cannot read the id file {path}: {reason}; give a text file, one sample_id a line") from None
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            value = int(line)
        except ValueError:
            raise UserError(f"{path}: line {number}: {line[:40]!r} is not a sample_id (one integer per line)") from None
        if not -(2**63) <= value < 2**63:
            raise UserError(f"{path}: line {number}: {line[:40]} is not a sample_id (a 64-bit integer)")
        ids.append(value)
    return np.unique(np.array(ids, np.int64))


def _matching(catalog: Catalog, where: str) -> np.ndarray:
    """Ids of current samples matching `where`, computed in a read-only connection (the `sql` sandbox):
    the removal's own write connection is not sandboxed."""
    from catalog.query import matching_ids

    with catalog.read() as conn:
        return matching_ids(conn, where)


def _candidates(conn, dataset: str | None, ids, matched, everything: bool) -> pa.Table:
    """(sample_id, dataset) membership rows the selectors name (none when only purging)."""
    if ids is None and matched is None and dataset is None and not everything:
        return LEAVING.empty_table()
    chosen = None
    for group in (ids, matched):
        if group is not None:
            chosen = group if chosen is None else np.intersect1d(chosen, group)
    sql = "SELECT sample_id, dataset FROM membership WHERE ($dataset IS NULL OR dataset = $dataset)"
    if chosen is None:
        return db.query_arrow(conn, sql, {"dataset": dataset}).cast(LEAVING)
    with db.registered(conn, "_chosen", db.id_table(chosen)):
        return db.query_arrow(
            conn, sql + " AND sample_id IN (SELECT sample_id FROM _chosen)", {"dataset": dataset}
        ).cast(LEAVING)


def _refuse_removing_everything(conn, plan: Leaving, everything: bool, dry_run: bool) -> None:
    current = db.execute(conn, "SELECT count(DISTINCT sample_id) FROM membership")[0][0]
    if current and len(plan.retired) == current and not everything and not dry_run:
        raise UserError(
            f"this would remove every sample in the catalog ({current}); nothing was removed: look with --dry-run, "
            "then pass --all to remove them all"
        )


def _dataset_effects(conn, rows_out: dict[str, int], versions: dict | None) -> list[dict[str, Any]]:
    effects = []
    for dataset, out in sorted(rows_out.items()):
        members = db.execute(conn, "SELECT count(*) FROM membership WHERE dataset = $d", {"d": dataset})[0][0]
        effects.append(
            {
                "dataset": dataset,
                "rows_out": out,
                "members_after": members if versions is not None else members - out,
                "version": versions.get(dataset) if versions else None,
            }
        )
    return effects


def _purge_rows(conn, change_id: int) -> int:
    """Delete every retired sample's rows for good (their ids stay in the history); returns how many."""
    db.execute(
        conn,
        """INSERT INTO purged_sample (sample_id, change_id)
            SELECT sample_id, $change_id FROM sample WHERE sample_id NOT IN (SELECT sample_id FROM membership)""",
        {"change_id": change_id},
    )
    purged = "(SELECT sample_id FROM purged_sample WHERE change_id = $change_id)"
    params = {"change_id": change_id}
    db.execute(conn, f"DELETE FROM one_shot_loss WHERE sample_id IN {purged} OR neighbour_id IN {purged}", params)
    for table in ("zero_shot_loss", "response_loss"):
        db.execute(conn, f"DELETE FROM {table} WHERE sample_id IN {purged}", params)
    for table in ("neighbour_link", "example_list"):
        db.execute(conn, f"DELETE FROM {table} WHERE sample_id IN {purged} OR neighbour_id IN {purged}", params)
    db.execute(conn, f"DELETE FROM score_current WHERE sample_id IN {purged}", params)
    count = db.execute(conn, f"DELETE FROM sample WHERE sample_id IN {purged}", params)[0][0]
    db.execute(conn, "UPDATE catalog_change SET vectors_done = false WHERE change_id = $change_id", params)
    return count


def _checkpoint(catalog: Catalog) -> None:
    """Write the deletions into the file (DuckDB reuses the freed blocks)."""
    with catalog.write() as conn:
        db.execute(conn, "CHECKPOINT")


def finish_purges(catalog: Catalog) -> int:
    """Finish purges whose LanceDB step did not (stopped after their DuckDB transaction); returns
    how many. The write commands call it first. It looks through a read connection, so a reader
    holding the catalog never makes it wait, on a handle that upgrades an old catalog as the
    write command would anyway; it holds the job lock while it deletes."""
    if not catalog.exists():
        return 0
    upgrading = Catalog(catalog.path, catalog.busy_timeout, auto_upgrade=True)
    if not _pending_purges(upgrading):
        return 0
    with catalog.job("purge"):
        return _delete_purged_vectors(catalog)


def _pending_purges(catalog: Catalog) -> list[int]:
    with catalog.read() as conn:
        return [row[0] for row in db.execute(conn, "SELECT change_id FROM catalog_change WHERE NOT vectors_done")]


def _delete_purged_vectors(catalog: Catalog) -> int:
    """Delete from every embedder's LanceDB table the vectors of purged samples (those not ingested
    again since), drop the older table versions that still hold them, then mark the purges done."""
    from catalog.embed import embedders

    pending = _pending_purges(catalog)
    if not pending:
        return 0
    with catalog.read() as conn:
        ids = db.query_arrow(
            conn,
            """SELECT DISTINCT sample_id FROM purged_sample
               WHERE change_id IN (SELECT change_id FROM catalog_change WHERE NOT vectors_done)
                 AND sample_id NOT IN (SELECT sample_id FROM sample)""",
        )["sample_id"].to_numpy()
    for embedder in embedders(catalog):
        embedder.vectors(catalog).delete(ids)
    with catalog.write() as conn:
        db.execute(
            conn,
            "UPDATE catalog_change SET vectors_done = true WHERE list_contains($ids::INTEGER[], change_id)",
            {"ids": pending},
        )
    return len(pending)


def history(catalog: Catalog, dataset: str | None = None) -> list[dict[str, Any]]:
    """Every version of `dataset` (or of every dataset), oldest first: the change, rows in and out, members after."""
    with catalog.read() as conn:
        require_dataset_ever(conn, dataset)
        return db.records(
            conn,
            """SELECT dataset, version, kind, rows_in, rows_out, members, detail,
                      strftime(created_at, '%Y-%m-%d %H:%M:%S') AS created_at, change_id
               FROM dataset_versions WHERE $dataset IS NULL OR dataset = $dataset
               ORDER BY change_id, dataset""",
            {"dataset": dataset},
        )


def require_dataset_ever(conn, dataset: str | None) -> None:
    """Raise UserError when `dataset` (if given) never had a version."""
    if dataset is None:
        return
    known = [row[0] for row in db.execute(conn, "SELECT DISTINCT dataset FROM dataset_version ORDER BY 1")]
    if dataset not in known:
        raise UserError(f"no dataset {dataset!r} in the catalog's history; datasets: {', '.join(known) or 'none'}")


def pool_versions(conn: sa.Connection, dataset: str | None) -> tuple[int | None, str]:
    """(the last change id, JSON {dataset: current version}) of the datasets a pool draws from."""
    last = db.execute(conn, "SELECT max(change_id) FROM catalog_change")[0][0]
    rows = db.execute(
        conn,
        """SELECT dataset, max(version) FROM dataset_version
           WHERE dataset IN (SELECT DISTINCT dataset FROM membership) AND ($dataset IS NULL OR dataset = $dataset)
           GROUP BY dataset ORDER BY dataset""",
        {"dataset": dataset},
    )
    return last, json.dumps(dict(rows))
