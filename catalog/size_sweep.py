"""How a metric of the trained model moves with K: the critique's "no prior for K", measured.

For each selection a scorer made (top K% by a strategy) that has training runs, the mean reference
loss of those runs on each test set (their mean and spread over runs: seeds) and their mean final
training loss. `report` prints it and plots reference loss against K; examples/k_sweep.sh makes
the nested top 1/5/10/20% selections, trains and evaluates them.
"""

from __future__ import annotations

import sqlalchemy as sa

from catalog import db
from catalog.run_metrics import RUN_METRICS

# The runs of this scorer's selections, over the runs and per-run metrics `experiments` reads.
SIZE_SWEEP_SQL = (
    RUN_METRICS
    + """
    SELECT r.strategy, round(coalesce(s.top_percent, 100.0 * s.selected / s.pool_size), 4) AS top_percent,
           s.selected AS samples, r.model AS trained, r.method, m.metric[length('reference_loss:') + 1:] AS testset,
           count(*) AS runs, avg(m.value) AS reference_loss, stddev_samp(m.value) AS reference_loss_std,
           avg(r.final_loss) AS final_train_loss
    FROM run r JOIN metric m USING (run_id) JOIN selection s USING (selection_id)
    WHERE s.scorer_id = $scorer AND starts_with(m.metric, 'reference_loss:') AND m.value IS NOT NULL
    GROUP BY ALL
    ORDER BY strategy, trained, method, testset, top_percent
"""
)


def size_sweep(conn: sa.Connection, scorer_id: int) -> list[dict]:
    """One row per (strategy, K, trained model, method, test set) with runs; [] when there are none."""
    return db.records(conn, SIZE_SWEEP_SQL, {"scorer": scorer_id})
