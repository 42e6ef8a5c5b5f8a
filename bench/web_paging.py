"""Web explorer speed: pages of 50 samples from a 1,000,000-sample catalog.

The catalog is built through `ingest` (four files of 250,000 rows: the real shared rows made
distinct), then an embedder, neighbour links, a scorer and its losses are inserted with SQL
(synthetic but shaped like a real run: 1% too long, 1% too long for the one-shot pass), and the
current scores computed from them as the writers would have kept them.
Each page is requested through the real app (routing, queries, templates); the figure is the
median of 5 requests after one warm-up.

Run: .venv/bin/python bench/web_paging.py [--catalog DIR]   (DIR is built once, then reused)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save, shared_records  # noqa: E402
from catalog import Catalog, current_scores, db  # noqa: E402
from catalog.ingest import ingest_file  # noqa: E402

SAMPLES = 1_000_000
FILES = 4
MODEL = "bench-model"
REPEATS = 5


def build(catalog: Catalog, work: Path) -> None:
    """Ingest SAMPLES distinct rows as FILES datasets, then synthetic scores for all of them."""
    unique = {(r["instruction"], r["input"], r["output"]): r for r in shared_records() if r["output"].strip()}
    base = list(unique.values())
    per_file = SAMPLES // FILES
    for part in range(FILES):
        path = work / f"part{part}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for i in range(part * per_file, (part + 1) * per_file):
                row = base[i % len(base)]
                handle.write(json.dumps({**row, "output": f"{row['output']} ({i // len(base)})"}) + "\n")
        ingest_file(catalog, path, f"part{part}")
        path.unlink()
    # Pseudo-random but deterministic values from the sample id: u(k) is uniform in [0, 1).
    u = "((hash(sample_id + {k}) % 1000003) / 1000003.0)"
    with catalog.write() as conn:
        now = {"now": db.utcnow()}
        db.execute(
            conn,
            """INSERT INTO embedder (embedder_id, name, path, dimension, pooling, normalized, max_seq_length,
                                     fingerprint, created_at)
               VALUES (1, 'synthetic', 'bench', 384, 'mean', true, 256, 'bench', $now)""",
            now,
        )
        db.execute(
            conn,
            f"INSERT INTO neighbour_run VALUES (1, 1, 'exact', 'full', {SAMPLES}, {SAMPLES}, {SAMPLES}, $now, $now,"
            " '')",
            now,
        )
        db.execute(
            conn,
            f"""INSERT INTO neighbour_link (sample_id, embedder_id, neighbour_id, similarity, run_id, computed_at)
                SELECT sample_id, 1, coalesce(lead(sample_id) OVER (ORDER BY sample_id), min(sample_id) OVER ()),
                       0.4 + 0.6 * {u.format(k=1)}, 1, $now FROM sample""",
            now,
        )
        db.execute(
            conn,
            f"""INSERT INTO scorer (scorer_id, model, source, fingerprint, template, max_length, dtype, created_at)
                VALUES (1, '{MODEL}', 'synthetic', 'bench', 'chat', 2048, 'float32', $now)""",
            now,
        )
        db.execute(
            conn,
            f"""INSERT INTO score_run (run_id, scorer_id, embedder_id, device, pool, samples, passes, tokens_run,
                                       started_at, finished_at)
                VALUES (1, 1, 1, 'cpu', {SAMPLES}, {SAMPLES}, {2 * SAMPLES}, 0, $now, $now)""",
            now,
        )
        losses = f"""
            SELECT sample_id, 1 AS scorer_id,
                   CASE WHEN {u.format(k=2)} < 0.01 THEN 'too_long' ELSE 'ok' END AS zero_status,
                   CASE WHEN {u.format(k=2)} < 0.01 THEN 'too_long'
                        WHEN {u.format(k=2)} < 0.02 THEN 'too_long_one_shot' ELSE 'ok' END AS one_status,
                   1 + (length(messages[-1].content) // 4)::INTEGER AS n_response,
                   0.5 + 3 * {u.format(k=3)} AS l_zero,
                   0.2 + 3 * {u.format(k=4)} AS l_one
            FROM sample"""
        db.execute(
            conn,
            f"""INSERT INTO zero_shot_loss (sample_id, scorer_id, status, sum_nll, n_response_tokens, loss, n_tokens,
                                            run_id, computed_at)
                SELECT sample_id, scorer_id, zero_status,
                       CASE WHEN zero_status = 'ok' THEN l_zero * n_response END, n_response,
                       CASE WHEN zero_status = 'ok' THEN l_zero END, n_response + 40, 1, $now
                FROM ({losses})""",
            now,
        )
        db.execute(
            conn,
            f"""INSERT INTO one_shot_loss (sample_id, scorer_id, neighbour_id, status, sum_nll, n_response_tokens,
                                           loss, n_tokens, run_id, computed_at, example_truncated)
                SELECT l.sample_id, scorer_id, l.neighbour_id, one_status,
                       CASE WHEN one_status = 'ok' THEN l_one * n_response END, n_response,
                       CASE WHEN one_status = 'ok' THEN l_one END, 2 * n_response + 80, 1, $now, false
                FROM ({losses}) JOIN neighbour_link l USING (sample_id)""",
            now,
        )
        current_scores.rebuild(conn)


def pages(catalog: Catalog) -> dict[str, str]:
    """The pages timed: name -> URL (pages of 50 samples, then the model page and the overview)."""
    base = f"/models/{MODEL}/samples"
    with catalog.read() as conn:  # the row halfway down the MIWV order: where a deep page starts
        value, sample_id = db.execute(
            conn,
            "SELECT miwv, sample_id FROM miwv_scores ORDER BY miwv DESC NULLS LAST, sample_id "
            f"LIMIT 1 OFFSET {SAMPLES // 2}",
        )[0]
    return {
        "first_page": base,
        "deep_page_500k": f"{base}?after={value!r}_{sample_id}",
        "filtered_page": f"{base}?status=ok&miwv_min=0.5&miwv_max=1.5&sort=zero_shot_loss",
        "dataset_page": f"{base}?dataset=part2",
        "text_search_page": f"{base}?q=python",
        "sql_filter_page": f"{base}?where=n_turns%20%3D%201%20AND%20s.input%20%3C%3E%20%27%27",
        "model_page": f"/models/{MODEL}",
        "overview": "/",
    }


def time_pages(catalog: Catalog) -> dict[str, float]:
    """Median milliseconds per page over REPEATS requests, after one warm-up request each."""
    from starlette.testclient import TestClient

    from web.app import create_app

    client = TestClient(create_app(catalog, ["testserver"]))
    results = {}
    for name, url in pages(catalog).items():
        assert client.get(url).status_code == 200, url
        times = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, url
            assert "/samples" not in url or response.text.count('<a class="id"') >= 50, url
        results[f"{name}_ms"] = round(statistics.median(times) * 1000, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", help="keep the built catalog here and reuse it on the next run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(args.catalog or Path(tmp) / "catalog")
        results: dict = {"samples": SAMPLES}
        if not catalog.exists():
            started = time.perf_counter()
            build(catalog, Path(tmp))
            results["build_s"] = round(time.perf_counter() - started, 1)
        results |= time_pages(catalog)
        results["load_average_1min"] = round(os.getloadavg()[0], 2)
    save("web_paging", results)


if __name__ == "__main__":
    main()
