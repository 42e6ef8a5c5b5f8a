"""Does a MIWV selection train a better model than the paper's baselines, on this machine?

The bundled SmolLM2-135M scores a pool of real shared rows (MIWV, Alpaca template, catalog
scope); selections of the same size are made by MIWV (top), low MIWV, high zero-shot loss and
random (3 seeds); each is trained with LoRA under 3 training seeds (random's selection of seed s
under training seed s). Every run is then measured two ways, both stored in the catalog: the
reference loss (mean response NLL) of a held-out split of the same files that shares no sample
with the pool, and the local judge (SmolLM2 itself, Cherry LLM's prompt, both orders) comparing
the MIWV run of each seed with each baseline run of the same seed on the first Vicuna prompts.
Every figure is printed with its spread over runs.

    python -m bench.selection_value [--pool 200] [--percent 5] [--heldout 40] [--prompts 8] [--work DIR]

A 135M model's in-context ability is weak (see the README's stability figures), so MIWV may
carry little signal here; the bench reports what it measures either way.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import miwv
from bench.common import SHARED_DATA, save, shared_records

MODEL = "smollm2-135m"
TEMPLATE = "alpaca"
SEEDS = (0, 1, 2)
BASELINES = ("random", "low-miwv", "zero-shot-loss")
MAX_CHARS = 600  # rows this long at most (instruction + input + output): training on CPU stays minutes


def short_records(n: int, seed: int) -> list[dict]:
    """`n` shared rows with a non-empty response and at most MAX_CHARS characters, drawn with a fixed seed."""
    rows = [r for r in shared_records() if r["output"].strip()]
    rows = [r for r in rows if len(r["instruction"]) + len(r.get("input") or "") + len(r["output"]) <= MAX_CHARS]
    return random.Random(seed).sample(rows, n)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def spread(values: list[float]) -> dict:
    """Mean, standard deviation (None for one value) and count of `values`."""
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
        "n": len(values),
    }


def make_selections(cat: miwv.Catalog, size: int) -> dict[str, list[int]]:
    """Strategy -> selection ids of `size` samples (random: one per seed); a rerun reuses the
    selections it made before, so its training runs are found finished, not redone."""
    made = {(s["strategy"], s["model"], s["top_k"], s["seed"]): s["selection_id"] for s in cat.selections()}

    def select(strategy: str, seed: int | None = None) -> int:
        model = None if strategy == "random" else MODEL
        known = made.get((strategy, model, size, seed))
        return known or cat.select(model=model, strategy=strategy, top_k=size, seed=seed or 0).selection_id

    chosen = {strategy: [select(strategy)] for strategy in ("miwv", *BASELINES[1:])}
    chosen["random"] = [select("random", seed) for seed in SEEDS]
    return chosen


def train_all(cat: miwv.Catalog, selections: dict[str, list[int]], args) -> tuple[dict, list[float]]:
    """Strategy -> {training seed: run id}, and each run's training seconds (start to finish, as
    recorded: a rerun finds them finished). A strategy with one selection trains it under every
    seed; random's selection of seed s trains under seed s."""
    runs = {}
    for strategy, ids in selections.items():
        runs[strategy] = {}
        for seed in SEEDS:
            selection_id = ids[0] if len(ids) == 1 else ids[seed]
            trained = cat.train(
                selection_id, MODEL, template=TEMPLATE, epochs=args.epochs, lr=args.lr,
                batch_size=2, gradient_accumulation=1, seed=seed, save_steps=1000,
            )  # fmt: skip
            runs[strategy][seed] = trained.run_id
            print(f"trained {strategy} (seed {seed}): run {trained.run_id}, {trained.seconds:.0f} s", flush=True)
    seconds = cat.sql("SELECT epoch(finished_at - started_at) AS s FROM train_run WHERE method = 'lora'")["s"]
    return runs, seconds.to_pylist()


def judge_against_miwv(cat: miwv.Catalog, runs: dict, vicuna: Path, tokens: int) -> dict[str, list[float]]:
    """Baseline -> MIWV's winning score against it (over both orders), one per training seed."""
    scores = {}
    for strategy in BASELINES:
        scores[strategy] = []
        for seed, run in runs[strategy].items():
            mine = runs["miwv"][seed]
            result = cat.evaluate([mine, run], testset=str(vicuna), judge=f"local:{MODEL}", max_new_tokens=tokens)
            (pair,) = result.pairs
            scores[strategy].append(pair["winning_score"] if pair["run_a"] == mine else 2 - pair["winning_score"])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=200, help="pool size (shared rows, fixed seed)")
    parser.add_argument("--percent", type=float, default=5.0, help="selection size, %% of the pool")
    parser.add_argument("--heldout", type=int, default=40, help="held-out rows with references (not in the pool)")
    parser.add_argument("--prompts", type=int, default=8, help="Vicuna prompts answered and judged")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per answer")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-4, help="LoRA learning rate")
    parser.add_argument("--work", type=Path, help="keep the catalog and its files here (default: a temporary folder)")
    args = parser.parse_args()

    root = Path(args.work or tempfile.mkdtemp(prefix="selection_value_"))
    root.mkdir(parents=True, exist_ok=True)
    rows = short_records(args.pool + args.heldout, seed=7)
    pool, heldout = rows[: args.pool], rows[args.pool :]
    vicuna_rows = (SHARED_DATA / "test" / "vicuna_80.jsonl").read_text(encoding="utf-8").splitlines()
    vicuna = root / f"vicuna{args.prompts}.jsonl"
    vicuna.write_text("\n".join(vicuna_rows[: args.prompts]) + "\n", encoding="utf-8")
    held = write_jsonl(root / "heldout.jsonl", heldout)

    results: dict = {"pool": args.pool, "percent": args.percent, "heldout": args.heldout, "prompts": args.prompts}
    cat = miwv.open(root / "catalog")
    started = time.perf_counter()
    cat.ingest(write_jsonl(root / "pool.jsonl", pool), dataset="pool")
    cat.embed()
    cat.score(model=MODEL, template=TEMPLATE)
    results["score_seconds"] = round(time.perf_counter() - started, 1)

    size = max(1, round(args.pool * args.percent / 100))
    results["selection_size"] = size
    runs, train_seconds = train_all(cat, make_selections(cat, size), args)
    results["train_seconds_per_run"] = spread(train_seconds)

    started = time.perf_counter()
    every = [run for by_seed in runs.values() for run in by_seed.values()]
    evaluated = cat.evaluate(
        every, testset=str(vicuna), reference_loss=str(held), base=MODEL, template=TEMPLATE, max_new_tokens=args.tokens
    )
    results["evaluate_seconds_per_run"] = round((time.perf_counter() - started) / len(evaluated.runs), 1)
    losses = evaluated.reference_losses
    results["reference_loss"] = {s: spread([losses[run] for run in r.values()]) for s, r in runs.items()}
    base_run = next(run for run in evaluated.runs if run not in every)
    results["reference_loss"]["base (no tuning)"] = spread([losses[base_run]])

    started = time.perf_counter()
    scores = judge_against_miwv(cat, runs, vicuna, args.tokens)
    results["judge_seconds"] = round(time.perf_counter() - started, 1)
    results["miwv_winning_score_vs"] = {strategy: spread(values) for strategy, values in scores.items()}
    results["catalog"] = str(root)
    save("selection_value", results)


if __name__ == "__main__":
    main()
