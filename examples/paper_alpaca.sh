#!/usr/bin/env bash
# The MIWV paper's recipe (arXiv 2511.07074) end to end, as this catalog runs it:
#   Alpaca 52k (hf:tatsu-lab/alpaca) ingested as dataset "alpaca"; BGE-large embeddings (mean
#   pooling); each sample's one-shot example is its nearest other Alpaca sample (--scope dataset);
#   Llama-2-7B losses under the Stanford Alpaca prompt; the top 1% and 5% by MIWV, and the paper's
#   three ablations at 1% (random, highest zero-shot loss, lowest MIWV), each written as a
#   LLaMA-Factory dataset folder under $OUT (dataset_dir: $OUT/<name>, dataset: <name>).
#
# Needs: the Hugging Face Hub (or a warm HF cache with tatsu-lab/alpaca, BAAI/bge-large-en-v1.5
#   and meta-llama/Llama-2-7b-hf, then HF_HUB_OFFLINE=1 works); Llama-2 is gated: accept its
#   licence on the Hub and `hf auth login` first. And a GPU: on a CPU the 7B model would
#   take weeks. About 13.5 GB of model weights are downloaded once.
#
# Expected time (an estimate from the README's arithmetic, not a measurement: no GPU run of a 7B
#   model has been made here): the README's figures for a 7B model are about 13 GFLOP per token
#   and about 2 x 300 tokens per sample (zero-shot + one-shot, the example's part reused), and one
#   H100 at 40% of its 989 TFLOP/s bf16 peak. 52,002 samples x 600 tokens = 3.1e7 tokens x 13 GFLOP
#   = 4.1e17 FLOP / 4.0e14 FLOP/s = about 17 minutes of scoring on one H100. Alpaca's rows are
#   shorter than 300 tokens, so this is on the safe side. Embedding 52k short texts with BGE-large
#   and the exact neighbour search take a few minutes more; downloads come on top.
#   Add `--workers N` to SCORE_FLAGS to score on N GPUs of one machine.
#
# Every setting is an environment variable; the defaults are the paper's:
#   MODEL=llama2-7b EMBEDDER=bge-large DATA=hf:tatsu-lab/alpaca DATASET=alpaca TEMPLATE=alpaca
#   PERCENTS="1 5"   top K% by MIWV, one selection each; the ablations use the first
#   OUT=paper_alpaca_out CATALOG=paper-catalog PYTHON=python
#   SCORE_FLAGS=""   passed to `score` as they are, e.g. "--limit 1000" or "--workers 8"
# TEMPLATE=alpaca is Stanford Alpaca's prompt, the paper's; to fine-tune with LLaMA-Factory's own
#   `template: alpaca`, score with TEMPLATE=alpaca-lf so the scored prompt is the trained one.
# The same script on this repository's bundled CPU models (what tests/test_paper_recipe.py runs):
#   MODEL=smollm2-135m EMBEDDER=minilm DATA=small.jsonl PERCENTS="10 20" examples/paper_alpaca.sh
# Rerunning it continues: ingest skips known rows, embed and score compute only what is missing,
# and each export replaces the folder it wrote before.
set -euo pipefail

MODEL="${MODEL:-llama2-7b}"
EMBEDDER="${EMBEDDER:-bge-large}"
DATA="${DATA:-hf:tatsu-lab/alpaca}"
DATASET="${DATASET:-alpaca}"
TEMPLATE="${TEMPLATE:-alpaca}"
PERCENTS="${PERCENTS:-1 5}"
OUT="${OUT:-paper_alpaca_out}"
CATALOG="${CATALOG:-paper-catalog}"
PYTHON="${PYTHON:-python}"
SCORE_FLAGS="${SCORE_FLAGS:-}"

CLI="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/cli.py"
read -r -a percents <<< "$PERCENTS"
ABLATION_PERCENT="${percents[0]}"

# Print a command, then run it.
run() {
    echo "+ $*" >&2
    "$@"
}

# Select the top PERCENT% of the dataset by STRATEGY and write it to $OUT/NAME for LLaMA-Factory.
select_into() {
    local name="$1" strategy="$2" percent="$3"
    echo "== select: $strategy, top $percent% -> $OUT/$name" >&2
    run "$PYTHON" "$CLI" select --catalog "$CATALOG" --model "$MODEL" --embedder "$EMBEDDER" \
        --dataset "$DATASET" --scope dataset --strategy "$strategy" --top-percent "$percent" \
        --out "$OUT/$name" --for llamafactory
}

echo "== ingest $DATA as dataset $DATASET into $CATALOG" >&2
split=()
[[ "$DATA" == hf:* ]] && split=(--split train)  # a Hub dataset has splits; Alpaca's rows are all in train
run "$PYTHON" "$CLI" ingest "$DATA" --catalog "$CATALOG" --dataset "$DATASET" "${split[@]}"

echo "== embed with $EMBEDDER; link each sample to its nearest other sample of its dataset" >&2
run "$PYTHON" "$CLI" embed --catalog "$CATALOG" --embedder "$EMBEDDER" --scope dataset

echo "== score $DATASET with $MODEL (template $TEMPLATE), examples from $DATASET" >&2
# SCORE_FLAGS is split into words on purpose: it holds zero or more flags.
# shellcheck disable=SC2086
run "$PYTHON" "$CLI" score --catalog "$CATALOG" --model "$MODEL" --template "$TEMPLATE" \
    --embedder "$EMBEDDER" --dataset "$DATASET" --scope dataset $SCORE_FLAGS

mkdir -p "$OUT"
for percent in "${percents[@]}"; do
    select_into "miwv_top$percent" miwv "$percent"
done
select_into "random_top$ABLATION_PERCENT" random "$ABLATION_PERCENT"
select_into "zero_shot_loss_top$ABLATION_PERCENT" zero-shot-loss "$ABLATION_PERCENT"
select_into "low_miwv_top$ABLATION_PERCENT" low-miwv "$ABLATION_PERCENT"

echo "== done: LLaMA-Factory dataset folders in $OUT" >&2
ls "$OUT"
