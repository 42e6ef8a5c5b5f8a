-- Top 1% of the catalog by MIWV for every model (scorer) at once, with a window function.
-- Ties go to the smaller sample_id, as in `cli.py select`.
WITH ranked AS (
    SELECT model, scorer_id, sample_id, miwv,
           row_number() OVER (PARTITION BY scorer_id ORDER BY miwv DESC, sample_id) AS rank
    FROM miwv_scores
    WHERE status = 'ok' AND embedder = 'minilm'
)
SELECT model, scorer_id, rank, sample_id, round(miwv, 4) AS miwv
FROM ranked
WHERE rank <= (SELECT greatest(1, floor(count(*) * 1 / 100 + 0.5)) FROM samples)
ORDER BY scorer_id, rank
