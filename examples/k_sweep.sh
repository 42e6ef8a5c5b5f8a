#!/usr/bin/env bash
# How large should K be? The MIWV paper keeps the top 1% and gives no prior for K; this sweep
# measures it on your data: nested top-K% selections by MIWV (top 1% is inside top 5%, ...), each
# fine-tuned (LoRA by default) under every seed in SEEDS, each run's mean response NLL on held-out
# reference answers (`evaluate --reference-loss`, lower is better), then `report`, whose
# summary.md and selection_size.png give reference loss against K with its spread over seeds.
#
# Every setting is an environment variable:
#   DATA=pool.jsonl        the pool (ingested as dataset $DATASET; any file `ingest` reads)
#   HELDOUT=heldout.jsonl  prompts with reference answers that are NOT in the pool (refused if they are)
#   MODEL=smollm2-135m TEMPLATE=alpaca EMBEDDER=minilm DATASET=pool CATALOG=k-sweep-catalog
#   PERCENTS="1 5 10 20"   K values, % of the pool
#   SEEDS="0"              training seeds per selection (e.g. "0 1 2" for a spread)
#   TRAIN_FLAGS=""         passed to `train` as they are, e.g. "--epochs 3 --lr 2e-4"
#   OUT=k_sweep_report PYTHON=python
# On this repository's CPU models (what tests/test_k_sweep.py runs, with a few steps):
#   DATA=pool.jsonl HELDOUT=held.jsonl PERCENTS="10 20" TRAIN_FLAGS="--max-steps 2" examples/k_sweep.sh
# Rerunning it continues: ingest, embed and score skip done work, an identical finished training
# run is reported, not redone, and evaluate computes only the missing reference losses.
set -euo pipefail

DATA="${DATA:?set DATA to the pool file}"
HELDOUT="${HELDOUT:?set HELDOUT to a file of held-out prompts with reference answers}"
MODEL="${MODEL:-smollm2-135m}"
TEMPLATE="${TEMPLATE:-alpaca}"
EMBEDDER="${EMBEDDER:-minilm}"
DATASET="${DATASET:-pool}"
CATALOG="${CATALOG:-k-sweep-catalog}"
PERCENTS="${PERCENTS:-1 5 10 20}"
SEEDS="${SEEDS:-0}"
TRAIN_FLAGS="${TRAIN_FLAGS:-}"
OUT="${OUT:-k_sweep_report}"
PYTHON="${PYTHON:-python}"

CLI="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/cli.py"

# Print a command, then run it.
run() {
    echo "+ $*" >&2
    "$@"
}

# The value of FIELD in the JSON a `--json` command printed on stdin.
field() {
    "$PYTHON" -c "import json, sys; print(json.load(sys.stdin)['$1'])"
}

run "$PYTHON" "$CLI" ingest "$DATA" --catalog "$CATALOG" --dataset "$DATASET"
run "$PYTHON" "$CLI" embed --catalog "$CATALOG" --embedder "$EMBEDDER"
run "$PYTHON" "$CLI" score --catalog "$CATALOG" --model "$MODEL" --template "$TEMPLATE" --embedder "$EMBEDDER" \
    --dataset "$DATASET"

runs=()
for percent in $PERCENTS; do
    echo "== top $percent% by MIWV" >&2
    selection=$(run "$PYTHON" "$CLI" select --catalog "$CATALOG" --model "$MODEL" --embedder "$EMBEDDER" \
        --dataset "$DATASET" --top-percent "$percent" --json | field selection_id)
    for seed in $SEEDS; do
        # TRAIN_FLAGS is split into words on purpose: it holds zero or more flags.
        # shellcheck disable=SC2086
        runs+=("$(run "$PYTHON" "$CLI" train --catalog "$CATALOG" --selection "$selection" --model "$MODEL" \
            --template "$TEMPLATE" --seed "$seed" $TRAIN_FLAGS --json | field run_id)")
    done
done

runs_list=$(IFS=,; echo "${runs[*]}")
run "$PYTHON" "$CLI" evaluate --catalog "$CATALOG" --runs "$runs_list" --reference-loss "$HELDOUT"
run "$PYTHON" "$CLI" report --catalog "$CATALOG" --model "$MODEL" --embedder "$EMBEDDER" --out "$OUT"
echo "== done: $OUT/summary.md and $OUT/selection_size.png" >&2
