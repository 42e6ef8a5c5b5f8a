"""IFD's extra pass: the response-alone pass against the zero-shot pass, and MIWV vs IFD agreement.

Data: N real samples drawn (seeded) from the four files of ../shared/data, ingested, embedded and
linked in a fresh catalog through the Python API (`import miwv`), scored by SmolLM2 (CPU, float32,
its chat template) with metrics miwv and ifd.

- speed: the same samples' zero-shot passes, then their response-alone passes, through the pass
  runner `score` uses (length-sorted batches under the CPU token budget), alternated twice; the
  faster of each is kept. Target: response-alone <= 0.6x zero-shot per sample.
- agreement, over the samples with both scores: Spearman's rho of MIWV with IFD (Cherry LLM's
  ratio of mean losses) and with ifd_ppl (Superfiltering's perplexity ratio), and the overlap of
  the top 5% each strategy keeps (miwv: highest MIWV; ifd: highest IFD among IFD <= 1;
  superfilter: highest ifd_ppl among ifd_ppl < 1) with MIWV's top 5%.

Run: .venv/bin/python bench/ifd_speed.py [--samples 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import miwv  # noqa: E402
from bench.common import sampled_records, save, timer  # noqa: E402
from catalog import Catalog  # noqa: E402
from catalog.score import PendingSample, messages_of  # noqa: E402
from scoring.batching import default_batching  # noqa: E402
from scoring.models import load_model, load_tokenizer, pad_id, resolve_model  # noqa: E402
from scoring.passes import PassRunner  # noqa: E402
from scoring.score import score_catalog  # noqa: E402
from scoring.sequences import SequenceBuilder  # noqa: E402

MODEL = "smollm2-135m"
BOTH_SQL = """
    SELECT m.sample_id, m.miwv, i.ifd, i.ifd_ppl
    FROM miwv_scores m JOIN ifd_scores i USING (sample_id, scorer_id)
    WHERE m.status = 'ok' AND i.status = 'ok' AND m.model = $model
"""


def time_passes(runner: PassRunner, rows: list[PendingSample]) -> tuple[float, int]:
    """(seconds, tokens run) of every pass `rows` need."""
    tokens = [0]

    def count(results, run: int) -> None:
        tokens[0] += run

    started = time.perf_counter()
    runner.run(rows, count)
    return time.perf_counter() - started, tokens[0]


def top(rows: list[dict], key: str, share: float, keep=lambda value: True) -> set[int]:
    """Sample ids of the highest `key` among rows that `keep`, `share` of all rows (at least one)."""
    count = max(1, int(len(rows) * share))
    ranked = sorted((r for r in rows if keep(r[key])), key=lambda r: r[key], reverse=True)
    return {r["sample_id"] for r in ranked[:count]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    results: dict = {"samples": args.samples, "torch_threads": torch.get_num_threads(), "model": MODEL}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog"
        cat = miwv.open(path)
        cat.ingest(sampled_records(args.samples), dataset="bench")
        cat.embed()

        spec = resolve_model(MODEL)
        tokenizer = load_tokenizer(spec)
        runner = PassRunner(
            load_model(spec, "cpu", torch.float32),
            SequenceBuilder(tokenizer, "chat", 4096),
            pad_id(tokenizer),
            default_batching("cpu"),
        )
        samples = [(r["sample_id"], messages_of(r["messages"])) for r in cat.sql("SELECT * FROM samples").to_pylist()]
        zero = [PendingSample(i, m, None, None, True, False) for i, m in samples]
        alone = [PendingSample(i, m, None, None, False, False, need_response=True) for i, m in samples]
        runs = {"zero": [], "response": []}
        for _ in range(2):  # alternated, so a busy machine slows both alike; the faster of each is kept
            runs["zero"].append(time_passes(runner, zero))
            runs["response"].append(time_passes(runner, alone))
        for kind, timings in runs.items():
            seconds, tokens = min(timings)
            results[f"{kind}_s"] = round(seconds, 3)
            results[f"{kind}_tokens"] = tokens
            results[f"{kind}_ms_per_sample"] = round(1000 * seconds / len(samples), 1)
        results["response_over_zero"] = round(results["response_s"] / results["zero_s"], 3)
        results["response_over_zero_tokens"] = round(results["response_tokens"] / results["zero_tokens"], 3)

        with timer(results, "score_miwv_ifd_s"):
            scored = score_catalog(Catalog(path), MODEL, device="cpu", metrics=("miwv", "ifd"))
        results["passes"] = {
            "zero_shot": scored.zero_shot_passes,
            "one_shot": scored.one_shot_passes,
            "response": scored.response_passes,
        }
        both = cat.sql(BOTH_SQL.replace("$model", f"'{MODEL}'")).to_pylist()
    results["scored_both"] = len(both)
    for name in ("ifd", "ifd_ppl"):
        rho = spearmanr([r["miwv"] for r in both], [r[name] for r in both]).statistic
        results[f"spearman_miwv_{name}"] = round(float(rho), 3)
    mine = top(both, "miwv", 0.05)
    results["top5_count"] = len(mine)
    results["top5_overlap_ifd"] = round(len(mine & top(both, "ifd", 0.05, lambda v: v <= 1)) / len(mine), 3)
    results["top5_overlap_superfilter"] = round(len(mine & top(both, "ifd_ppl", 0.05, lambda v: v < 1)) / len(mine), 3)
    results["ifd_above_1"] = sum(r["ifd"] > 1 for r in both)
    save("ifd_speed", results)


if __name__ == "__main__":
    main()
