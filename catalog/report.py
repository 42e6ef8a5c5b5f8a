"""The distribution of a model's MIWV per dataset: a summary table and two PNG plots.

Users look at this before choosing K: how many samples are scored, where MIWV sits, how
often an example hurt (MIWV > 0), how similar the examples were, and L_zero against L_one.
Only current samples count: both statements read `score_current` (a retired sample's rows there
are deleted when it retires) with the current memberships (`membership`, `samples`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from catalog import db
from catalog.errors import UserError
from catalog.export import MARKER, check_ours, staged
from catalog.store import Catalog

ALL = "(all)"


@dataclass(frozen=True)
class Report:
    summary: list[dict]  # one row per dataset, then ALL
    files: list[Path]
    scorer: str  # which scorer and template the losses come from


SUMMARY_SQL = """
    WITH scored AS (
        SELECT m.sample_id, m.miwv, m.similarity, m.zero_shot_loss, m.one_shot_loss, d.dataset
        FROM score_current m JOIN membership d USING (sample_id)
        WHERE m.scorer_id = $scorer AND m.embedder_id = $embedder AND m.status = 'ok'
    ),
    summary AS (  -- one row per dataset, and one ($all) over every (sample, dataset) row
        SELECT CASE WHEN grouping(dataset) = 1 THEN $all ELSE dataset END AS dataset,
               count(DISTINCT sample_id) AS scored,
               quantile_cont(miwv, [0.05, 0.25, 0.5, 0.75, 0.95]) AS q,
               round(avg((miwv > 0)::INTEGER), 4) AS positive,
               quantile_cont(similarity, [0.25, 0.5, 0.75]) AS sim,
               round(avg(zero_shot_loss), 4) AS l_zero,
               round(avg(one_shot_loss), 4) AS l_one,
               round(corr(zero_shot_loss, one_shot_loss), 4) AS corr
        FROM scored GROUP BY GROUPING SETS ((dataset), ()))
    SELECT dataset, scored,
           round(q[1], 4) AS p05, round(q[2], 4) AS p25, round(q[3], 4) AS median, round(q[4], 4) AS p75,
           round(q[5], 4) AS p95, positive,
           round(sim[1], 4) AS sim_p25, round(sim[2], 4) AS sim_median, round(sim[3], 4) AS sim_p75,
           l_zero, l_one, corr
    FROM summary WHERE scored > 0 ORDER BY dataset = $all, dataset
"""


def write_report(catalog: Catalog, scorer_id: int, embedder_id: int, model: str, out_dir: str | Path) -> Report:
    """Write summary.md, miwv_histogram.png and losses.png to the folder `out_dir`: a new one, or one
    a report or export wrote (it is replaced whole), never inside the catalog. The files are written
    to a staging folder beside it first, so a failure leaves `out_dir` as it was."""
    out = check_out(catalog, out_dir)
    params = {"scorer": scorer_id, "embedder": embedder_id}
    with catalog.read() as conn:
        summary = db.records(conn, SUMMARY_SQL, {**params, "all": ALL})
        template, revision = db.execute(
            conn, "SELECT template, template_revision FROM scorer WHERE scorer_id = $scorer", {"scorer": scorer_id}
        )[0]
        points = db.records(
            conn,
            """
            SELECT s.datasets[1] AS dataset, m.miwv, m.zero_shot_loss, m.one_shot_loss
            FROM miwv_scores m JOIN samples s USING (sample_id)
            WHERE m.scorer_id = $scorer AND m.embedder_id = $embedder AND m.status = 'ok'""",
            params,
        )
    scorer = f"scorer {scorer_id}: template {template} (revision {revision})"
    with staged(out) as stage:
        stage.path.mkdir()
        (stage.path / MARKER).write_text("written by miwv-catalog `report --out`; it may replace this folder\n")
        written = [_markdown(summary, model, scorer, stage.path / "summary.md")]
        if points:
            written += [
                _histogram(points, model, stage.path / "miwv_histogram.png"),
                _losses(points, model, stage.path / "losses.png"),
            ]
    return Report(summary, [out / path.name for path in written], scorer)


def check_out(catalog: Catalog, out_dir: str | Path) -> Path:
    """`out_dir` if a report may be written there (see write_report), else a UserError saying why."""
    out = Path(out_dir)
    check_ours(catalog, out, "no report was written")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a folder; give a new folder name (no report was written)")
    return out


def _markdown(summary: list[dict], model: str, scorer: str, path: Path) -> Path:
    columns = list(summary[0]) if summary else ["dataset", "scored"]
    lines = [
        f"# MIWV of {model}",
        "",
        scorer,
        "",
        "MIWV = L_one - L_zero; high MIWV: a relevant example made the model worse.",
        "p05..p95: MIWV quantiles; positive: share with MIWV > 0; sim_*: neighbour-similarity quartiles;",
        "l_zero, l_one: mean losses; corr: their correlation. A sample in two datasets counts in both.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |" for row in summary]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _by_dataset(points: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for point in points:
        groups.setdefault(point["dataset"], []).append(point)
    return dict(sorted(groups.items()))


@contextmanager
def _plot(path: Path, size: tuple[float, float]) -> Iterator:
    """An axis to draw on; the figure is saved to `path` (headless) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=size)
    try:
        yield axis
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)


def _histogram(points: list[dict], model: str, path: Path) -> Path:
    groups = _by_dataset(points)
    with _plot(path, (8, 4.5)) as axis:
        axis.hist(
            [[p["miwv"] for p in group] for group in groups.values()],
            bins=40 if len(points) > 40 else 10,
            stacked=True,
            label=list(groups),
        )
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set(xlabel="MIWV = L_one - L_zero (nats/token)", ylabel="samples", title=f"MIWV of {model}")
    return path


def _losses(points: list[dict], model: str, path: Path) -> Path:
    with _plot(path, (5.5, 5.5)) as axis:
        for dataset, group in _by_dataset(points).items():
            axis.scatter([p["zero_shot_loss"] for p in group], [p["one_shot_loss"] for p in group], s=6, label=dataset)
        top = max(max(p["zero_shot_loss"], p["one_shot_loss"]) for p in points)
        axis.plot([0, top], [0, top], color="black", linewidth=0.8)  # above the line: MIWV > 0
        axis.set(xlabel="L_zero", ylabel="L_one", title=f"{model}: one-shot vs zero-shot loss")
    return path
