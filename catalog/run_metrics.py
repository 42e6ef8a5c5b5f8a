"""One definition of a training run's metrics, read by `experiments`, its pages and `report`'s
selection-size section: each run with its seed group (runs that differ only in seed) and final
train loss, and each run's metrics in long form (final_loss, and reference_loss:TESTSET, the mean
reference loss on a test set)."""

RUN_METRICS = """
    WITH run AS (
        SELECT r.run_id,
               min(r.run_id) OVER seeds AS seed_group, count(*) OVER seeds AS seeds,
               r.selection_id, s.strategy, s.selected AS size, r.model, r.method, r.template, r.seed, r.samples,
               (SELECT loss FROM train_loss l WHERE l.run_id = r.run_id ORDER BY step DESC LIMIT 1) AS final_loss,
               strftime(r.finished_at, '%Y-%m-%d %H:%M:%S') AS finished_at
        FROM train_run r LEFT JOIN selection s USING (selection_id)
        WINDOW seeds AS (PARTITION BY r.selection_id, r.model, r.method, r.template, r.hyperparameters)
    ), metric AS (
        SELECT run_id, 'final_loss' AS metric, final_loss AS value FROM run
        UNION ALL
        SELECT l.run_id, 'reference_loss:' || p.testset, avg(l.loss)
        FROM reference_loss l JOIN test_prompt p USING (prompt_id) GROUP BY l.run_id, p.testset
    )
"""
