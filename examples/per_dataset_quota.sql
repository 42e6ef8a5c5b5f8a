-- Top 2% of each dataset by MIWV: a quota per dataset, so no dataset crowds out the others.
-- A sample in two datasets competes in both.
WITH pool AS (SELECT sample_id, unnest(datasets) AS dataset FROM samples),
sizes AS (SELECT dataset, count(*) AS n FROM pool GROUP BY dataset),
ranked AS (
    SELECT p.dataset, m.sample_id, m.miwv,
           row_number() OVER (PARTITION BY p.dataset ORDER BY m.miwv DESC, m.sample_id) AS rank
    FROM pool p JOIN miwv_scores m USING (sample_id)
    WHERE m.model = 'smollm2-135m' AND m.embedder = 'minilm' AND m.status = 'ok'
)
SELECT r.dataset, r.rank, r.sample_id, round(r.miwv, 4) AS miwv
FROM ranked r JOIN sizes USING (dataset)
WHERE r.rank <= greatest(1, floor(sizes.n * 2 / 100 + 0.5))
ORDER BY r.dataset, r.rank
