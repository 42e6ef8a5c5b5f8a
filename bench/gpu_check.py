"""GPU check, one script of at most 8 minutes, needing only torch, transformers and this repo
(no catalog, no DuckDB/LanceDB, no model download).

(a) Losses of real samples (rows of tests/data/mixed_180.jsonl) under a randomly initialised
    SmolLM2-shaped model seeded on the CPU: CPU float32 (the reference) against CUDA float32
    and CUDA bfloat16, computed by our scorer's `extend` (scoring/losses.py).
(b) Throughput of our scorer (length-sorted batches under the token budget the GPU's free
    memory allows, LM head only at response positions) against the naive one (one sequence
    at a time, logits at every position), for a Qwen2.5-7B-shaped random model in bfloat16:
    tokens/s and MFU (2 x parameters x tokens/s over the device's dense bf16 peak).

`--smoke` runs tiny shapes on whatever is here (CPU included) so the script itself is tested.

Run: python bench/gpu_check.py [--smoke] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from scoring.batching import CUDA_BATCHING, bytes_per_token, gpu_token_budget, pack  # noqa: E402
from scoring.losses import HEAD_CHUNK, Piece, extend  # noqa: E402

FIXTURE = REPO / "tests" / "data" / "mixed_180.jsonl"
SMOLLM2 = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True}  # fmt: skip
QWEN_7B = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}  # fmt: skip
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}  # fmt: skip


def real_pieces(vocab: int, rows: int) -> list[Piece]:
    """Prompt + response ids of real rows: UTF-8 bytes shifted into the vocabulary (no tokenizer
    download needed; lengths and content are the real ones, which is what the checks need)."""
    pieces = []
    for line in FIXTURE.read_text(encoding="utf-8").splitlines()[:rows]:
        record = json.loads(line)
        prompt = (record["instruction"] + "\n\n" + record.get("input", "")).encode()[:600]
        response = record["output"].encode()[:300]
        ids = [3 + b % (vocab - 3) for b in prompt + response]
        pieces.append(Piece(ids, len(response)))
    return pieces


def nll_per_token(model, pieces: list[Piece]) -> torch.Tensor:
    sums, _ = extend(model, pieces, 0)
    return torch.tensor(sums) / torch.tensor([p.n_response for p in pieces], dtype=torch.float64)


def check_losses(device: str, shape: dict, rows: int) -> dict:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=4096)).eval()  # seeded on the CPU
    pieces = real_pieces(shape["vocab_size"], rows)
    reference = nll_per_token(model, pieces)
    out = {"rows": rows, "mean_loss_cpu_fp32": round(float(reference.mean()), 4)}
    for dtype in (torch.float32, torch.bfloat16):
        moved = model.to(device=device, dtype=dtype)
        difference = (nll_per_token(moved, pieces) - reference).abs().max()
        out[f"max_abs_diff_{device}_{str(dtype).removeprefix('torch.')}"] = float(difference)
        model = model.to(device="cpu", dtype=torch.float32)
    return out


@torch.inference_mode()
def naive(model, pieces: list[Piece]) -> None:
    for piece in pieces:
        ids = torch.tensor([piece.ids], device=model.device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        torch.log_softmax(logits, dim=-1)[-piece.n_response :].gather(1, ids[0, -piece.n_response :, None]).sum()


def ours(model, pieces: list[Piece], budget: int) -> None:
    batching = CUDA_BATCHING.override(token_budget=budget)
    for batch in pack([len(p.ids) for p in pieces], batching):
        extend(model, [pieces[i] for i in batch], 0)


def timed(run, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def check_throughput(device: str, shape: dict, sequences: int, naive_sequences: int, peak_tflops: float) -> dict:
    config = Qwen2Config(**shape, max_position_embeddings=4096)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    free = torch.cuda.mem_get_info()[0] if device.startswith("cuda") else 8 << 30
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    head_dim = config.hidden_size // config.num_attention_heads
    budget = gpu_token_budget(
        free,
        params * dtype.itemsize,
        bytes_per_token(
            config.num_hidden_layers,
            config.hidden_size,
            config.num_key_value_heads,
            head_dim,
            config.intermediate_size,
            dtype.itemsize,
        ),  # fmt: skip
        2 * HEAD_CHUNK * config.vocab_size * 4,
    )
    base = real_pieces(config.vocab_size, 180)
    pieces = [base[i % len(base)] for i in range(sequences)]
    ours(model, pieces[:8], budget)  # warm-up
    ours_s = timed(lambda: ours(model, pieces, budget), device)
    naive_s = timed(lambda: naive(model, pieces[:naive_sequences]), device)
    ours_tps = sum(len(p.ids) for p in pieces) / ours_s
    naive_tps = sum(len(p.ids) for p in pieces[:naive_sequences]) / naive_s
    return {
        "params_b": round(params / 1e9, 3),
        "token_budget": budget,
        "ours_tokens_per_s": round(ours_tps),
        "naive_tokens_per_s": round(naive_tps),
        "speedup": round(ours_tps / naive_tps, 2),
        "ours_mfu": round(2 * params * ours_tps / (peak_tflops * 1e12), 3),
        "naive_mfu": round(2 * params * naive_tps / (peak_tflops * 1e12), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, any device: checks the script itself")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "smoke": args.smoke}
    results["losses"] = check_losses(device, SMOLLM2 | TINY if args.smoke else SMOLLM2, 8 if args.smoke else 32)
    results["throughput"] = check_throughput(
        device, QWEN_7B | TINY if args.smoke else QWEN_7B, 16 if args.smoke else 512, 4 if args.smoke else 64,
        args.peak_tflops,
    )  # fmt: skip
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
