"""`experiments`: every training run with its metrics, and mean and spread over seeds.

One row per run: its selection (strategy, size), model, method, seed, final train loss, mean
reference loss per test set, and its pairwise winning score against each other run (per judge,
over both orders). Runs that differ only in seed (same selection, model, template, method and
hyperparameters) form a group; each row carries its group's size and the mean and standard
deviation of the final loss and of each reference loss.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from catalog.db import records
from catalog.store import Catalog

RUNS = """
SELECT r.run_id, r.selection_id, s.strategy, s.selected AS size, r.model, r.method, r.template, r.seed,
       r.hyperparameters,
       (SELECT loss FROM train_loss l WHERE l.run_id = r.run_id ORDER BY step DESC LIMIT 1) AS final_loss
FROM train_run r LEFT JOIN selection s USING (selection_id)
ORDER BY r.run_id
"""
REFERENCE = """
SELECT l.run_id, p.testset, avg(l.loss) AS loss
FROM reference_loss l JOIN test_prompt p USING (prompt_id)
GROUP BY l.run_id, p.testset
"""
SCORES = """
SELECT run_a, run_b, judge, count(*) AS n,
       1 + (count(*) FILTER (verdict = 'a') - count(*) FILTER (verdict = 'b')) / count(*) AS score
FROM judgement GROUP BY run_a, run_b, judge
"""


def experiments(catalog: Catalog) -> list[dict]:
    """The runs x metrics table (see the module docstring)."""
    with catalog.read() as conn:
        runs, reference, scores = (records(conn, sql) for sql in (RUNS, REFERENCE, SCORES))
    losses = defaultdict(dict)
    for row in reference:
        losses[row["run_id"]][f"reference_loss:{row['testset']}"] = row["loss"]
    wins = defaultdict(dict)
    for row in scores:
        wins[row["run_a"]][f"vs {row['run_b']} ({row['judge']})"] = row["score"]
        wins[row["run_b"]][f"vs {row['run_a']} ({row['judge']})"] = 2 - row["score"]
    table = [
        {
            **{k: v for k, v in run.items() if k != "hyperparameters"},
            **losses[run["run_id"]],
            "winning_score": wins[run["run_id"]],
        }
        for run in runs
    ]
    _add_seed_spread(table, runs)
    return table


def _add_seed_spread(table: list[dict], runs: list[dict]) -> None:
    """Each row's seed group: its size and the mean and standard deviation of each loss over it."""
    groups = defaultdict(list)
    for row, run in zip(table, runs, strict=True):
        key = (run["selection_id"], run["model"], run["method"], run["template"], run["hyperparameters"])
        groups[key].append(row)
    for rows in groups.values():
        metrics = [k for k in rows[0] if k == "final_loss" or k.startswith("reference_loss:")]
        spread = {}
        for metric in metrics:
            values = [r[metric] for r in rows if r.get(metric) is not None]
            spread[f"{metric} mean"] = statistics.fmean(values) if values else None
            spread[f"{metric} std"] = statistics.stdev(values) if len(values) > 1 else None
        for row in rows:
            row.update(seeds=len(rows), **spread)
