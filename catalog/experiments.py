"""`experiments` and the explorer's experiment pages: every training run with its metrics, and two
runs' answers side by side with the judge's verdicts. Every SQL statement they read lives here.

One row per run: its selection (strategy, size), model, method, seed, final train loss, mean
reference loss per test set, and its pairwise winning score against each other run (per judge,
over both orders and every generation setting judged). Runs that differ only in seed (same
selection, model, method, template and hyperparameters) form a seed group, named by its first
run's id (so adding runs never renames a group); the group's size and the mean and standard
deviation of each metric over it are read by one statement (`seed_groups`).

The statements take their values inlined (catalog.explore.fetch), so the text a page shows under
a table is the text that ran, and runs unchanged in `cli.py sql`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from catalog.explore import NotFound, Table, fetch
from catalog.run_metrics import RUN_METRICS
from catalog.store import Catalog

RUNS_SQL = RUN_METRICS + "SELECT * FROM run ORDER BY run_id"
RUNS_NAMED_SQL = RUN_METRICS + "SELECT * FROM run WHERE run_id IN ($a, $b) ORDER BY run_id"
# Mean reference loss per run and test set; `prompts`: those whose reference fit (loss not NULL).
REFERENCE_SQL = """
    SELECT l.run_id, p.testset, count(l.loss) AS prompts, avg(l.loss) AS loss
    FROM reference_loss l JOIN test_prompt p USING (prompt_id)
    GROUP BY l.run_id, p.testset ORDER BY l.run_id, p.testset
"""
SEED_GROUPS_SQL = (
    RUN_METRICS
    + """
    SELECT r.seed_group, r.selection_id, r.strategy, r.size, r.model, r.method, r.template, m.metric,
           any_value(r.seeds) AS seeds, count(m.value) AS runs, list(r.seed ORDER BY r.seed) AS seed_list,
           avg(m.value) AS mean, stddev_samp(m.value) AS std, min(m.value) AS min, max(m.value) AS max
    FROM run r JOIN metric m USING (run_id)
    GROUP BY ALL ORDER BY r.seed_group, m.metric
"""
)
# The paper's pairwise winning score of run_a against run_b: 1 + (wins - losses) / n over both orders.
PAIRS_SQL = """
    SELECT run_a, run_b, judge, count(*) AS n,
           count(*) FILTER (verdict = 'a') AS wins_a, count(*) FILTER (verdict = 'tie') AS ties,
           count(*) FILTER (verdict = 'b') AS wins_b,
           1 + (count(*) FILTER (verdict = 'a') - count(*) FILTER (verdict = 'b')) / count(*) AS winning_score
    FROM judgement GROUP BY run_a, run_b, judge ORDER BY run_a, run_b, judge
"""
LOSS_CURVES_SQL = "SELECT run_id, step, epoch, loss, learning_rate FROM train_loss ORDER BY run_id, step"
CLI_COLUMNS = ("run_id", "selection_id", "strategy", "size", "model", "method", "template", "seed", "final_loss")

# ---- two runs side by side ---------------------------------------------------------------
# A judgement is stored with run_a < run_b; these name the runs a page calls A ($a) and B ($b).
# Prompts both runs answered under one generation setting, per setting and test set.
ANSWERED_SQL = """
    SELECT ga.settings, p.testset, count(*) AS prompts
    FROM generation ga
    JOIN generation gb ON gb.run_id = $b AND gb.prompt_id = ga.prompt_id AND gb.settings = ga.settings
    JOIN test_prompt p ON p.prompt_id = ga.prompt_id
    WHERE ga.run_id = $a
    GROUP BY ALL ORDER BY ga.settings, p.testset
"""
SHOWN_SQL = """
    SELECT p.testset, p.position, p.prompt_id,
           CASE WHEN p.input = '' THEN p.prompt ELSE p.prompt || chr(10) || chr(10) || p.input END AS prompt,
           p.reference,
           ga.text AS answer_a, ga.n_tokens AS tokens_a, gb.text AS answer_b, gb.n_tokens AS tokens_b
    FROM test_prompt p
    JOIN generation ga ON ga.run_id = $a AND ga.prompt_id = p.prompt_id AND ga.settings = $settings
    JOIN generation gb ON gb.run_id = $b AND gb.prompt_id = p.prompt_id AND gb.settings = $settings
"""
JUDGED = """
    SELECT j.prompt_id, j.judge, CASE WHEN j.a_first THEN j.run_a ELSE j.run_b END AS shown_first,
           CASE j.verdict WHEN 'a' THEN j.run_a WHEN 'b' THEN j.run_b END AS winner,
           j.verdict, j.raw, j.judge_prompt_hash
    FROM judgement j
    WHERE j.run_a = least($a, $b) AND j.run_b = greatest($a, $b) AND j.settings = $settings
"""
PAIR_SUMMARY_SQL = """
    WITH judged AS ({judged})
    SELECT judge, count(*) AS n, count(*) FILTER (winner = $a) AS wins, count(*) FILTER (verdict = 'tie') AS ties,
           count(*) FILTER (winner = $b) AS losses,
           1 + (count(*) FILTER (winner = $a) - count(*) FILTER (winner = $b)) / count(*) AS winning_score,
           count(*) FILTER (winner = shown_first) AS first_shown_won
    FROM judged JOIN test_prompt p USING (prompt_id) {where}
    GROUP BY judge ORDER BY judge
"""
VERDICTS_SQL = """
    WITH shown AS ({shown}), judged AS ({judged})
    SELECT judged.* FROM judged JOIN shown USING (prompt_id)
    ORDER BY shown.testset, shown.position, judged.prompt_id, judged.judge, judged.shown_first = $b
"""


def experiments(catalog: Catalog) -> list[dict]:
    """The runs x metrics table (see the module docstring): what `cli.py experiments` prints."""
    with catalog.read() as conn:
        return runs_with_metrics(experiment_tables(conn))


def experiment_tables(conn: sa.Connection) -> dict[str, Table]:
    """The /experiments page's tables: runs, reference losses, seed groups, judged pairs, loss curves."""
    return {
        name: fetch(conn, name, sql)
        for name, sql in (
            ("runs", RUNS_SQL),
            ("reference_losses", REFERENCE_SQL),
            ("seed_groups", SEED_GROUPS_SQL),
            ("pairs", PAIRS_SQL),
            ("loss_curves", LOSS_CURVES_SQL),
        )
    }


def runs_with_metrics(tables: dict[str, Table]) -> list[dict[str, Any]]:
    """One dict per run: its CLI_COLUMNS, `reference_loss:TESTSET` per test set, `winning_score`
    ({"vs B (judge)": score}), its seed group's size (`seeds`) and each metric's mean and std."""
    losses = defaultdict(dict)
    for row in tables["reference_losses"].rows:
        losses[row["run_id"]][f"reference_loss:{row['testset']}"] = row["loss"]
    wins = defaultdict(dict)
    for row in tables["pairs"].rows:
        wins[row["run_a"]][f"vs {row['run_b']} ({row['judge']})"] = row["winning_score"]
        wins[row["run_b"]][f"vs {row['run_a']} ({row['judge']})"] = 2 - row["winning_score"]
    spread = defaultdict(dict)
    for row in tables["seed_groups"].rows:
        spread[row["seed_group"]].update({f"{row['metric']} mean": row["mean"], f"{row['metric']} std": row["std"]})
    return [
        {
            **{column: run[column] for column in CLI_COLUMNS},
            **losses[run["run_id"]],
            "winning_score": wins[run["run_id"]],
            "seeds": run["seeds"],
            **spread[run["seed_group"]],
        }
        for run in tables["runs"].rows
    ]


@dataclass(frozen=True)
class Pair:
    """Two runs' answers side by side under one generation setting: who they are, what both
    answered (`answered`: per setting and test set), the judges' summary, one page of prompts and
    their verdicts, and how many prompts there are in all (`total`, under `testset` when given)."""

    a: dict[str, Any]
    b: dict[str, Any]
    settings: str | None
    testset: str | None
    total: int
    tables: dict[str, Table]  # answered, summary, prompts, verdicts


def run_pair(
    conn: sa.Connection, a: int, b: int, settings: str | None, testset: str | None, limit: int | None, offset: int
) -> Pair:
    """Runs `a` and `b` compared prompt by prompt (the `limit` prompts from `offset`, all without a
    limit), under generation `settings` (default: the one with the most prompts both answered) and
    test set `testset` (default: all). NotFound for an unknown run, setting or test set, naming
    those there are."""
    runs = _two_runs(conn, a, b)
    answered = fetch(conn, "answered", ANSWERED_SQL, {"a": a, "b": b})
    settings = _chosen_settings(answered.rows, settings)
    testsets = sorted({row["testset"] for row in answered.rows if row["settings"] == settings})
    if testset is not None and testset not in testsets:
        raise NotFound(
            f"runs {a} and {b} have no answers to test set {testset!r}"
            + (f"; they both answered {', '.join(testsets)}" if testsets else "")
        )
    total = sum(r["prompts"] for r in answered.rows if r["settings"] == settings and testset in (None, r["testset"]))
    params = {"a": a, "b": b, "settings": settings, "testset": testset}
    where = "WHERE p.testset = $testset" if testset else ""
    page = f"LIMIT {int(limit)} OFFSET {int(offset)}" if limit else ""
    shown = f"{SHOWN_SQL} {where} ORDER BY p.testset, p.position, p.prompt_id {page}"
    statements = {
        "summary": PAIR_SUMMARY_SQL.format(judged=JUDGED, where=where),
        "prompts": shown,
        "verdicts": VERDICTS_SQL.format(shown=shown, judged=JUDGED),
    }
    tables = {"answered": answered}
    if settings is not None:
        tables |= {name: fetch(conn, name, sql, params) for name, sql in statements.items()}
    return Pair(runs[a], runs[b], settings, testset, total, tables)


def _two_runs(conn: sa.Connection, a: int, b: int) -> dict[int, dict[str, Any]]:
    """Runs a and b by id; NotFound naming the runs there are when either is unknown."""
    found = {row["run_id"]: row for row in fetch(conn, "runs", RUNS_NAMED_SQL, {"a": a, "b": b}).rows}
    for run_id in (a, b):
        if run_id not in found:
            known = [row["run_id"] for row in fetch(conn, "runs", RUNS_SQL).rows]
            there = f"runs here: {', '.join(map(str, known))}" if known else "this catalog has no training run yet"
            raise NotFound(f"no training run {run_id}; {there} (see /experiments)")
    return found


def _chosen_settings(answered: list[dict[str, Any]], asked: str | None) -> str | None:
    """The generation setting asked for, else the one with the most prompts both runs answered
    (None when they answered none alike); NotFound for a setting they have no answers under."""
    counts = defaultdict(int)
    for row in answered:
        counts[row["settings"]] += row["prompts"]
    if asked is None:
        return max(counts, key=lambda s: (counts[s], s), default=None)
    if asked not in counts:
        there = f"; they have {' and '.join(sorted(counts))}" if counts else ""
        raise NotFound(f"the two runs have no answers under generation settings {asked}{there}")
    return asked
