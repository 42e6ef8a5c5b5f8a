-- The 10 samples with the highest MIWV for one model: a relevant example made the model worse.
SELECT round(m.miwv, 3) AS miwv,
       round(m.zero_shot_loss, 3) AS l_zero,
       round(m.one_shot_loss, 3) AS l_one,
       round(m.similarity, 3) AS similarity,
       s.datasets[1] AS dataset,
       left(s.user_text, 70) AS instruction
FROM miwv_scores m JOIN samples s USING (sample_id)
WHERE m.model = 'smollm2-135m' AND m.status = 'ok'
ORDER BY m.miwv DESC, m.sample_id
LIMIT 10
