-- Top 50 by MIWV among samples whose example was relevant but not a near-duplicate:
-- a very similar example that still hurts may point at a noisy pair rather than a weakness.
-- The lower bound alone is `select --min-similarity 0.5` (recorded, with its exclusions counted);
-- this query adds the upper one. Catalog-wide examples; for a dataset's own, use
-- m.scope_dataset = 'NAME' instead of m.scope = 'catalog'.
SELECT round(m.miwv, 3) AS miwv, round(m.similarity, 3) AS similarity, m.sample_id, m.neighbour_id,
       left(s.user_text, 60) AS instruction
FROM miwv_scores m JOIN samples s USING (sample_id)
WHERE m.model = 'smollm2-135m' AND m.embedder = 'minilm' AND m.scope = 'catalog' AND m.status = 'ok'
  AND m.similarity BETWEEN 0.5 AND 0.95
ORDER BY m.miwv DESC, m.sample_id
LIMIT 50
