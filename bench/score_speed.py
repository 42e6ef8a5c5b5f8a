"""Scoring speed: the `score` job vs a naive reference, in one run, on SmolLM2 (CPU, float32).

Data: N real samples drawn (seeded) from the four files of ../shared/data, ingested, embedded
and linked in a fresh catalog through the Python API (`import miwv`); every sample needs both passes.

- ours: `miwv`'s `score` (length-sorted batches under a token budget, the LM head only at
  response positions, one-shot passes continuing their example's zero-shot KV cache).
- naive: the same sequences, one forward pass each at batch size 1, logits at every
  position, float32 log-softmax (how per-sample scorers do it).

Reports both times, the speed-up, the largest loss difference, and achieved FLOP/s
(2 x parameters x tokens run) against this machine's fp32 matmul peak measured here.

Run: .venv/bin/python bench/score_speed.py [--samples 200]
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

import miwv  # noqa: E402
from bench.common import sampled_records, save, timer  # noqa: E402
from catalog.score import messages_of  # noqa: E402
from scoring.models import load_model, load_tokenizer, resolve_model  # noqa: E402
from scoring.sequences import Sequence, SequenceBuilder  # noqa: E402

# Each sample's messages and its neighbour's: the one-shot example the scorer uses.
PAIRS_SQL = """
    SELECT s.sample_id, s.messages, t.messages AS neighbour_messages
    FROM samples s JOIN neighbours n USING (sample_id) JOIN samples t ON t.sample_id = n.neighbour_id
"""
STORED_SQL = """
    SELECT 'zero' AS kind, sample_id, loss FROM zero_shot_loss WHERE status = 'ok'
    UNION ALL SELECT 'one', sample_id, loss FROM one_shot_loss WHERE status = 'ok'
"""


def matmul_peak_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    started = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9


@torch.inference_mode()
def naive_losses(model, sequences: dict) -> dict:
    losses = {}
    for key, sequence in sequences.items():
        ids = torch.tensor([sequence.ids])
        logits = model(input_ids=ids).logits[0, :-1].float()  # every position
        log_probs = torch.log_softmax(logits, dim=-1)
        start = len(sequence.ids) - sequence.n_response
        targets = ids[0, start:]
        losses[key] = -log_probs[start - 1 :, :].gather(1, targets[:, None]).mean().item()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    rows = sampled_records(args.samples)
    results: dict = {
        "samples": args.samples,
        "torch_threads": torch.get_num_threads(),
        "matmul_peak_gflops": round(matmul_peak_gflops(), 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cat = miwv.open(Path(tmp) / "catalog")
        cat.ingest(rows, dataset="bench")
        cat.embed()
        spec = resolve_model("smollm2-135m")
        model = load_model(spec, "cpu", torch.float32)
        builder = SequenceBuilder(load_tokenizer(spec), "chat", 4096)
        sequences = {}
        for pair in cat.sql(PAIRS_SQL).to_pylist():
            sequences[("zero", pair["sample_id"])] = builder.zero_shot(messages_of(pair["messages"]))
            sequences[("one", pair["sample_id"])] = builder.one_shot(
                messages_of(pair["messages"]), messages_of(pair["neighbour_messages"])
            )
        sequences = {k: s for k, s in sequences.items() if isinstance(s, Sequence)}
        results["sequences"] = len(sequences)
        results["sequence_tokens"] = sum(len(s.ids) for s in sequences.values())

        with timer(results, "ours_s"):
            ours = cat.score("smollm2-135m", device="cpu")
        with timer(results, "naive_s"):
            naive = naive_losses(model, sequences)
        stored = {(r["kind"], r["sample_id"]): r["loss"] for r in cat.sql(STORED_SQL).to_pylist()}
    results["ours_tokens_run"] = ours.tokens_run
    results["speedup"] = round(results["naive_s"] / results["ours_s"], 2)
    params = sum(p.numel() for p in model.parameters())
    results["params_m"] = round(params / 1e6, 1)
    results["ours_gflops"] = round(2 * params * ours.tokens_run / results["ours_s"] / 1e9, 1)
    results["naive_gflops"] = round(2 * params * results["sequence_tokens"] / results["naive_s"] / 1e9, 1)
    results["ours_share_of_peak"] = round(results["ours_gflops"] / results["matmul_peak_gflops"], 2)
    results["max_abs_loss_diff"] = max(abs(stored[k] - naive[k]) for k in naive)
    save("score_speed", results)


if __name__ == "__main__":
    main()
