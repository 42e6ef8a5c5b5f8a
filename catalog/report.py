"""The distribution of a model's MIWV per dataset: a summary table and two PNG plots.

Users look at this before choosing K: how many samples are scored, where MIWV sits, how
often an example hurt (MIWV > 0), how similar the examples were, and L_zero against L_one.
Only current samples count: both statements read `score_current` (a retired sample's rows there
are deleted when it retires) with the current memberships (`membership`, `samples`).

When the scorer also has response-alone losses (`score --metrics miwv,ifd`), the report adds the
baselines beside MIWV: IFD and ifd_ppl per dataset (from the `ifd_scores` view, current samples
only) and how far MIWV and IFD agree on the samples that have both, so a user sees on their own
data whether the two scores would pick the same samples. Without response losses the report is
exactly what it was.

Scores are read in one scope: catalog-wide examples (the default), or with scope "dataset" each
dataset's rows from the scores whose examples came from that dataset. When the scorer has MIWV with
two or more examples per sample (`score --examples K`), a stability section says how far MIWV holds
when the example changes (catalog.examples.stability). When selections of the scorer were trained
and evaluated (`train`, `evaluate --reference-loss`), a selection-size section gives the reference
loss against K, and selection_size.png plots it (catalog.size_sweep).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from catalog import db
from catalog.choices import SCOPES
from catalog.errors import ArgumentError, UserError
from catalog.examples import stability_in
from catalog.export import MARKER, check_ours, staged
from catalog.size_sweep import size_sweep
from catalog.store import Catalog

ALL = "(all)"


@dataclass(frozen=True)
class Report:
    summary: list[dict]  # one row per dataset, then ALL
    files: list[Path]
    scorer: str  # which scorer and template the losses come from
    # {"summary": rows per dataset then ALL, "agreement": one row or None}; None: the scorer has no response losses
    ifd: dict | None = None
    # selections of this scorer made through a screen: their estimated recall of its top K% (selection.cascade)
    cascades: list[dict] | None = None
    # {"scope": ..., "rows": one per dataset (scope dataset) or ALL (catalog): Stability.as_dict() and "dataset"};
    # None: no sample has MIWV with two examples
    stability: dict | None = None
    # per (strategy, K, trained model, method, test set): its runs' reference loss; [] without evaluated runs
    sizes: list[dict] = ()


# A score_current row `m`, joined to a membership `d`, of the report's scope: catalog-wide, or d's dataset,
# or one stored scope given as $scope (the explorer's pages read one at a time). Statements carry it as
# {scope}; the constants below are the catalog-wide ones (scoped() gives any).
_OF_SCOPE = {
    "catalog": "m.scope_dataset = ''",
    "dataset": "m.scope_dataset = d.dataset",
    "one": "m.scope_dataset = $scope",
}


def scoped(sql: str, scope: str) -> str:
    """A report statement (SUMMARY, AGREEMENT) for `scope` ("catalog", "dataset" or "one")."""
    return sql.replace("{scope}", _OF_SCOPE[scope])


_SUMMARY_SQL = """
    WITH scored AS (
        SELECT m.sample_id, m.miwv, m.similarity, m.zero_shot_loss, m.one_shot_loss, d.dataset
        FROM score_current m JOIN membership d USING (sample_id)
        WHERE m.scorer_id = $scorer AND m.embedder_id = $embedder AND m.status = 'ok' AND {scope}
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
SUMMARY_SQL = scoped(_SUMMARY_SQL, "catalog")
SUMMARY_ONE_SCOPE_SQL = scoped(_SUMMARY_SQL, "one")

# Does the scorer have response-alone losses for a current sample (then IFD can be shown)?
HAS_IFD_SQL = "SELECT EXISTS (SELECT 1 FROM ifd_scores WHERE scorer_id = $scorer) AS has_ifd"

# IFD = L(y|x) / L(y) (Cherry LLM), ifd_ppl = exp(L(y|x) - L(y)) (Superfiltering), per dataset and
# over every (sample, dataset) row as SUMMARY_SQL counts; only samples whose IFD is defined (status ok).
IFD_SUMMARY_SQL = """
    WITH scored AS (
        SELECT i.sample_id, i.ifd, i.ifd_ppl, i.response_loss, d.dataset
        FROM ifd_scores i JOIN membership d USING (sample_id)
        WHERE i.scorer_id = $scorer AND i.status = 'ok'
    ),
    summary AS (
        SELECT CASE WHEN grouping(dataset) = 1 THEN $all ELSE dataset END AS dataset,
               count(DISTINCT sample_id) AS scored,
               quantile_cont(ifd, [0.25, 0.5, 0.75]) AS q,
               quantile_cont(ifd_ppl, [0.25, 0.5, 0.75]) AS p,
               round(avg((ifd <= 1)::INTEGER), 4) AS ifd_at_most_1,
               round(avg((ifd_ppl < 1)::INTEGER), 4) AS ifd_ppl_below_1,
               round(avg(response_loss), 4) AS l_response
        FROM scored GROUP BY GROUPING SETS ((dataset), ()))
    SELECT dataset, scored,
           round(q[1], 4) AS ifd_p25, round(q[2], 4) AS ifd_median, round(q[3], 4) AS ifd_p75,
           round(p[1], 4) AS ifd_ppl_p25, round(p[2], 4) AS ifd_ppl_median, round(p[3], 4) AS ifd_ppl_p75,
           ifd_at_most_1, ifd_ppl_below_1, l_response
    FROM summary WHERE scored > 0 ORDER BY dataset = $all, dataset
"""

TOP_PERCENT = 5  # the agreement's top share, as `select --top-percent 5` counts it

# MIWV against IFD on the samples that have both (status ok): Spearman's correlation is Pearson's
# over the ranks (highest first, ties to the smaller sample_id, as `select` ranks); the overlap is
# how many of MIWV's top K (K = 5% of those samples, rounded, at least 1) are in IFD's top K.
# No row when no sample has both. With scope "dataset", a sample counts once per dataset it is in.
_AGREEMENT_SQL = """
    WITH both_scores AS (
        SELECT DISTINCT m.sample_id, m.scope_dataset, m.miwv, i.ifd
        FROM score_current m JOIN ifd_scores i ON i.sample_id = m.sample_id AND i.scorer_id = m.scorer_id
             JOIN membership d ON d.sample_id = m.sample_id
        WHERE m.scorer_id = $scorer AND m.embedder_id = $embedder AND m.status = 'ok' AND i.status = 'ok'
          AND {scope}
    ),
    ranked AS (
        SELECT row_number() OVER (ORDER BY miwv DESC, sample_id) AS rank_miwv,
               row_number() OVER (ORDER BY ifd DESC, sample_id) AS rank_ifd
        FROM both_scores
    ),
    top AS (SELECT greatest(1, floor(count(*) * $percent / 100 + 0.5))::BIGINT AS top_k FROM both_scores)
    SELECT count(*) AS samples, round(corr(rank_miwv, rank_ifd), 4) AS spearman, $percent AS top_percent, top_k,
           count(*) FILTER (WHERE rank_miwv <= top_k AND rank_ifd <= top_k) AS top_overlap,
           round(top_overlap / top_k, 4) AS top_overlap_share
    FROM ranked, top GROUP BY top_k
"""
AGREEMENT_SQL = scoped(_AGREEMENT_SQL, "catalog")
AGREEMENT_ONE_SCOPE_SQL = scoped(_AGREEMENT_SQL, "one")


def ifd_figures(conn: sa.Connection, scorer_id: int, embedder_id: int, scope: str = "catalog") -> dict | None:
    """The IFD section's figures (see Report.ifd), or None when the scorer has no response losses."""
    params = {"scorer": scorer_id}
    if not db.execute(conn, HAS_IFD_SQL, params)[0][0]:
        return None
    agreement = db.records(
        conn, scoped(_AGREEMENT_SQL, scope), {**params, "embedder": embedder_id, "percent": TOP_PERCENT}
    )
    return {
        "summary": db.records(conn, IFD_SUMMARY_SQL, {**params, "all": ALL}),
        "agreement": agreement[0] if agreement else None,
    }


# The newest selections ranked on this scorer's scores that came through a screen (`score --pool`).
CASCADES_SQL = """
    SELECT selection_id, strategy, top_k, top_percent, cascade
    FROM selection WHERE scorer_id = $scorer AND cascade IS NOT NULL
    ORDER BY selection_id DESC LIMIT 5
"""


def cascades(conn: sa.Connection, scorer_id: int) -> list[dict]:
    """Each screened selection of the scorer with its recall estimate (the JSON of selection.cascade)."""
    rows = db.records(conn, CASCADES_SQL, {"scorer": scorer_id})
    return [{**row, "cascade": json.loads(row["cascade"])} for row in rows]


def stability_figures(conn: sa.Connection, scorer_id: int, embedder_id: int, scope: str = "catalog") -> dict | None:
    """The stability section (see Report.stability): over the catalog-wide lists, or per dataset over
    each dataset's own; None when no list has two scored examples."""
    if scope == "catalog":
        scopes = [(ALL, "")]
    else:
        names = [row[0] for row in db.execute(conn, "SELECT DISTINCT dataset FROM membership ORDER BY 1")]
        scopes = [(name, name) for name in names]
    rows = []
    for name, scope_dataset in scopes:
        figures = stability_in(conn, scorer_id, embedder_id, scope_dataset, TOP_PERCENT)
        if figures is not None:
            rows.append({"dataset": name, **figures.as_dict()})
    return {"scope": scope, "rows": rows} if rows else None


# Each scored (sample, dataset) for the plots: catalog-wide, a sample once, in its first dataset.
POINTS_SQL = """
    SELECT d.dataset, m.miwv, m.zero_shot_loss, m.one_shot_loss
    FROM score_current m JOIN membership d USING (sample_id) JOIN samples s USING (sample_id)
    WHERE m.scorer_id = $scorer AND m.embedder_id = $embedder AND m.status = 'ok' AND {scope}
      AND ($dataset_scope OR d.dataset = s.datasets[1])
    ORDER BY m.sample_id, d.dataset
"""


def write_report(
    catalog: Catalog, scorer_id: int, embedder_id: int, model: str, out_dir: str | Path, scope: str = "catalog"
) -> Report:
    """Write summary.md, miwv_histogram.png and losses.png to the folder `out_dir`: a new one, or one
    a report or export wrote (it is replaced whole), never inside the catalog. The files are written
    to a staging folder beside it first, so a failure leaves `out_dir` as it was.

    `scope`: "catalog" reads the scores with catalog-wide examples; "dataset" reads, for each dataset,
    the scores whose examples came from that dataset."""
    if scope not in SCOPES:
        raise ArgumentError(f"{{0}} must be one of {', '.join(SCOPES)}", "scope", detail=f"got {scope!r}")
    out = check_out(catalog, out_dir)
    params = {"scorer": scorer_id, "embedder": embedder_id}
    with catalog.read() as conn:
        summary = db.records(conn, scoped(_SUMMARY_SQL, scope), {**params, "all": ALL})
        template, revision = db.execute(
            conn, "SELECT template, template_revision FROM scorer WHERE scorer_id = $scorer", {"scorer": scorer_id}
        )[0]
        points = db.records(conn, scoped(POINTS_SQL, scope), {**params, "dataset_scope": scope == "dataset"})
        ifd = ifd_figures(conn, scorer_id, embedder_id, scope)
        screened = cascades(conn, scorer_id)
        stable = stability_figures(conn, scorer_id, embedder_id, scope)
        sizes = size_sweep(conn, scorer_id)
    scorer = f"scorer {scorer_id}: template {template} (revision {revision})"
    with staged(out) as stage:
        stage.path.mkdir()
        (stage.path / MARKER).write_text("written by miwv-catalog `report --out`; it may replace this folder\n")
        written = [_markdown(summary, model, scorer, stage.path / "summary.md", ifd, screened, stable, sizes)]
        if points:
            written += [
                _histogram(points, model, stage.path / "miwv_histogram.png"),
                _losses(points, model, stage.path / "losses.png"),
            ]
        if sizes:
            written.append(_sizes(sizes, model, stage.path / "selection_size.png"))
    return Report(summary, [out / path.name for path in written], scorer, ifd, screened, stable, sizes)


def check_out(catalog: Catalog, out_dir: str | Path) -> Path:
    """`out_dir` if a report may be written there (see write_report), else a UserError saying why."""
    out = Path(out_dir)
    check_ours(catalog, out, "no report was written")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a folder; give a new folder name (no report was written)")
    return out


def _markdown(
    summary: list[dict],
    model: str,
    scorer: str,
    path: Path,
    ifd: dict | None = None,
    screened: list | None = None,
    stable: dict | None = None,
    sizes: list[dict] = (),
) -> Path:
    lines = [
        f"# MIWV of {model}",
        "",
        scorer,
        "",
        "MIWV = L_one - L_zero; high MIWV: a relevant example made the model worse.",
        "p05..p95: MIWV quantiles; positive: share with MIWV > 0; sim_*: neighbour-similarity quartiles;",
        "l_zero, l_one: mean losses; corr: their correlation. A sample in two datasets counts in both.",
        "",
        *_table(summary, ["dataset", "scored"]),
    ]
    if ifd is not None:
        lines += ["", *_ifd_markdown(ifd)]
    if screened:
        lines += ["", "## Screening", "", *map(screen_line, screened)]
    if stable is not None:
        lines += ["", *_stability_markdown(stable)]
    if sizes:
        lines += ["", *_sizes_markdown(sizes)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _table(rows: list[dict], empty_columns: list[str]) -> list[str]:
    columns = list(rows[0]) if rows else empty_columns
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |" for row in rows]


def _ifd_markdown(ifd: dict) -> list[str]:
    lines = [
        "## IFD and Superfiltering",
        "",
        "IFD = L(y|x) / L(y) (Cherry LLM): the response's zero-shot loss over its loss alone (one start token",
        "before it). ifd_ppl = exp(L(y|x) - L(y)) (Superfiltering): the same comparison as a perplexity ratio.",
        "High: the prompt helps the model little with the response. Below 1: the prompt helps. Cherry LLM keeps",
        "IFD <= 1, Superfiltering keeps ifd_ppl < 1, then each takes the highest first.",
        "ifd_*, ifd_ppl_*: quartiles; ifd_at_most_1, ifd_ppl_below_1: the shares those filters keep;",
        "l_response: mean loss of the response alone. A sample in two datasets counts in both.",
        "",
        *_table(ifd["summary"], ["dataset", "scored"]),
        "",
    ]
    agreement = ifd["agreement"]
    if agreement is None:
        return lines + ["No sample has both MIWV and IFD, so their agreement cannot be measured."]
    return lines + [
        f"MIWV against IFD over the {agreement['samples']} samples that have both:",
        f"- Spearman rank correlation {agreement['spearman']} (1: the same order, 0: unrelated, -1: reversed).",
        f"- Top {agreement['top_percent']}%: {agreement['top_overlap']} of MIWV's top {agreement['top_k']} are also in "
        f"IFD's top {agreement['top_k']} (share {agreement['top_overlap_share']}; two unrelated scores would share "
        f"about {agreement['top_percent']}%).",
    ]


STABILITY_COLUMNS = ["dataset", "samples", "examples", "rank_correlation", "top_share", "loss_correlation", "spread"]


def _stability_markdown(stable: dict) -> list[str]:
    lines = [
        "## Stability: MIWV with the 2nd nearest example instead of the 1st",
        "",
        "samples: scored with both examples; examples: the most per sample; rank_correlation: Spearman of",
        f"MIWV@1 and MIWV@2; top_share: the share of the top {TOP_PERCENT}% by MIWV@1 still in the top {TOP_PERCENT}%",
        "by MIWV@2; loss_correlation: Pearson of L_one and L_zero (1st example); spread: median over samples of",
        "the range of their MIWV over their examples (nats/token).",
        "",
        *_table([{c: _rounded(row[c]) for c in STABILITY_COLUMNS} for row in stable["rows"]], STABILITY_COLUMNS),
        "",
    ]
    return lines + [f"- {row['dataset']}: {row['meaning']}" for row in stable["rows"]]


SIZE_COLUMNS = [
    "strategy", "top_percent", "samples", "trained", "method", "testset", "runs",
    "reference_loss", "reference_loss_std", "final_train_loss",
]  # fmt: skip


def _sizes_markdown(sizes: list[dict]) -> list[str]:
    return [
        "## Selection size: the trained model's reference loss against K",
        "",
        "Each selection of this scorer that was trained (`train`) and evaluated (`evaluate --reference-loss`):",
        "reference_loss: the mean response NLL of a test set's reference answers under its runs (lower is better),",
        "mean and standard deviation over runs (seeds); final_train_loss: their mean last logged training loss.",
        "",
        *_table([{c: _rounded(row[c]) for c in SIZE_COLUMNS} for row in sizes], SIZE_COLUMNS),
    ]


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


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


def _sizes(sizes: list[dict], model: str, path: Path) -> Path:
    """Reference loss against K (log axis), one line per strategy, trained model, method and test set."""
    lines: dict[str, list[dict]] = {}
    for row in sizes:
        lines.setdefault(f"{row['strategy']}, {row['trained']} {row['method']}, {row['testset']}", []).append(row)
    with _plot(path, (7, 4.5)) as axis:
        for label, rows in lines.items():
            axis.errorbar(
                [r["top_percent"] for r in rows],
                [r["reference_loss"] for r in rows],
                yerr=[r["reference_loss_std"] or 0 for r in rows],
                marker="o",
                capsize=3,
                label=label,
            )
        axis.set_xscale("log")
        axis.set(xlabel="K: top % of the pool selected", ylabel="reference loss (nats/token)", title=f"{model}: K")
    return path


def screen_line(row: dict) -> str:
    """One screened selection's estimate in words (the estimate covers its top K%, from the calibration)."""
    c = row["cascade"]
    return (
        f"- selection {row['selection_id']} ({row['strategy']}): the screen (selection {c['screen_selection_id']}) "
        f"kept an estimated {c['recall']:.0%} (95% CI {c['ci_low']:.0%}-{c['ci_high']:.0%}) of this model's top "
        f"{c['top_percent']:g}%, from {c['calibration_scored']} calibration samples ({c['kept']} of their top "
        f"{c['calibration_top']} were in the screen)."
    )
