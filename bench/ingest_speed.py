"""Ingest speed: 50,000 Alpaca rows (real shared rows, made distinct) into a fresh catalog,
then the same file again (all duplicates).

Run: .venv/bin/python bench/ingest_speed.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save, shared_records, timer  # noqa: E402
from catalog import Catalog  # noqa: E402
from catalog.ingest import ingest_file  # noqa: E402

ROWS = 50_000


def main() -> None:
    unique = {(r["instruction"], r["input"], r["output"]): r for r in shared_records() if r["output"].strip()}
    base = list(unique.values())
    rows = [
        {**base[i % len(base)], "output": f"{base[i % len(base)]['output']} ({i // len(base)})"} for i in range(ROWS)
    ]
    results: dict = {"rows": ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        results["file_mb"] = round(path.stat().st_size / 1e6, 1)
        catalog = Catalog(Path(tmp) / "catalog")
        with timer(results, "fresh_s"):
            first = ingest_file(catalog, path, "bench")
        with timer(results, "again_s"):
            again = ingest_file(catalog, path, "bench")
    assert first.rows_new == ROWS and again.rows_new == 0
    results["fresh_rows_per_s"] = round(ROWS / results["fresh_s"])
    results["again_rows_per_s"] = round(ROWS / results["again_s"])
    save("ingest_speed", results)


if __name__ == "__main__":
    main()
