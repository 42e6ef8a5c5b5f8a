"""How a metric of the trained model moves with K: the critique's "no prior for K", measured.

For each selection a scorer made (top K% by a strategy) that has training runs, the mean reference
loss of those runs on each test set (their mean and spread over runs: seeds) and their mean final
training loss. `report` prints it and plots reference loss against K; examples/k_sweep.sh makes
the nested top 1/5/10/20% selections, trains and evaluates them.
"""

from __future__ import annotations

import sqlalchemy as sa

from catalog import db

SIZE_SWEEP_SQL = """
WITH per_run AS (
    SELECT s.strategy, coalesce(s.top_percent, 100.0 * s.selected / s.pool_size) AS top_percent,
           s.selected, r.model AS trained, r.method, p.testset, r.run_id, avg(l.loss) AS loss,
           (SELECT loss FROM train_loss t WHERE t.run_id = r.run_id ORDER BY step DESC LIMIT 1) AS final_loss
    FROM selection s JOIN train_run r USING (selection_id)
         JOIN reference_loss l USING (run_id) JOIN test_prompt p USING (prompt_id)
    WHERE s.scorer_id = $scorer AND l.loss IS NOT NULL
    GROUP BY ALL
)
SELECT strategy, round(top_percent, 4) AS top_percent, selected AS samples, trained, method, testset,
       count(*) AS runs, avg(loss) AS reference_loss, stddev_samp(loss) AS reference_loss_std,
       avg(final_loss) AS final_train_loss
FROM per_run
GROUP BY ALL
ORDER BY strategy, trained, method, testset, top_percent
"""


def size_sweep(conn: sa.Connection, scorer_id: int) -> list[dict]:
    """One row per (strategy, K, trained model, method, test set) with runs; [] when there are none."""
    return db.records(conn, SIZE_SWEEP_SQL, {"scorer": scorer_id})
