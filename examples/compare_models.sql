-- Models side by side: Spearman rank correlation of MIWV for every pair of scorers,
-- over the samples both scored (ranks computed within each pair's shared samples).
WITH scored AS (
    SELECT scorer_id, model, template, sample_id, miwv
    FROM miwv_scores WHERE status = 'ok' AND embedder = 'minilm'
),
pairs AS (
    SELECT a.scorer_id AS scorer_a, a.model || ' (' || a.template || ')' AS model_a,
           b.scorer_id AS scorer_b, b.model || ' (' || b.template || ')' AS model_b,
           a.miwv AS miwv_a, b.miwv AS miwv_b
    FROM scored a JOIN scored b ON a.sample_id = b.sample_id AND a.scorer_id < b.scorer_id
),
ranked AS (
    SELECT *, rank() OVER (PARTITION BY scorer_a, scorer_b ORDER BY miwv_a) AS rank_a,
              rank() OVER (PARTITION BY scorer_a, scorer_b ORDER BY miwv_b) AS rank_b
    FROM pairs
)
SELECT model_a, model_b, count(*) AS shared_samples,
       round(corr(rank_a, rank_b), 4) AS spearman, round(corr(miwv_a, miwv_b), 4) AS pearson
FROM ranked
GROUP BY ALL
ORDER BY model_a, model_b
