"""Embedding throughput of the default embedder (MiniLM, mean pooling) on real shared rows.

Encodes 1,600 user texts (every 10th row of ../shared/data) with the bare Embedder at batch
sizes 16 and 64, then runs the real `embed` job on a catalog of the same rows (LanceDB
writes included).

Run: .venv/bin/python bench/embed_speed.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save, shared_records, timer  # noqa: E402
from catalog import Catalog  # noqa: E402
from catalog.ingest import ingest_file  # noqa: E402
from catalog.records import alpaca_user_text  # noqa: E402
from scoring.embed import (  # noqa: E402
    Embedder,
    embed_missing,  # noqa: E402
    resolve_embedder,
)
from tests.conftest import write_jsonl  # noqa: E402


def main() -> None:
    rows = [r for r in shared_records()[::10] if r["output"].strip()]
    texts = [alpaca_user_text(r["instruction"], r["input"]) for r in rows]
    results: dict = {"texts": len(texts), "mean_chars": round(sum(map(len, texts)) / len(texts))}
    spec = resolve_embedder("minilm")
    for batch_size in (16, 64):
        model = Embedder(spec, "cpu", batch_size)
        model.encode(texts[:32])  # warm-up
        with timer(results, f"encode_batch{batch_size}_s"):
            model.encode(texts)
        results[f"encode_batch{batch_size}_texts_per_s"] = round(len(texts) / results[f"encode_batch{batch_size}_s"], 1)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp) / "catalog")
        ingest_file(catalog, write_jsonl(Path(tmp) / "rows.jsonl", rows), "bench")
        with timer(results, "embed_job_s"):
            embed_missing(catalog, "minilm", device="cpu")
        results["embed_job_texts_per_s"] = round(len(texts) / results["embed_job_s"], 1)
    save("embed_speed", results)


if __name__ == "__main__":
    main()
