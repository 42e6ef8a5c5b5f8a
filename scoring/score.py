"""The score step: zero-shot and one-shot losses of every pool sample that lacks them.

Only what is missing is computed: a zero-shot pass where a sample has none for the scorer,
a one-shot pass where it has none for its current neighbour. Each batch's results are
committed in their own transaction by a writer thread while the next batch computes; an
interrupted run waits for the writes already queued, so it loses at most the batch in flight.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from catalog import Catalog
from catalog.embed import find_embedder
from catalog.score import (
    PassResult,
    PendingSample,
    finish_run,
    pending_samples,
    register_scorer,
    save_results,
    start_run,
)
from scoring.device import pick_device, pick_dtype
from scoring.models import choose_template, default_max_length, load_model, load_tokenizer, pad_id, resolve_model
from scoring.passes import PassRunner
from scoring.sequences import SequenceBuilder
from terminal.progress import Meter

CHUNK = 512  # samples whose passes are planned together (examples shared within a chunk)
# (token budget, rows, padding slack, min tokens) per device: CPUs gain little from big batches
# but pay ~40 ms per forward to stream the weights; GPUs gain a lot from big batches.
BATCHING = {"cpu": (2048, 16, 0.1, 512), "cuda": (32768, 128, 0.5, 8192)}


@dataclass(frozen=True)
class ScoreResult:
    model: str
    scorer_id: int
    template: str
    max_length: int
    device: str
    pool: int  # samples in the pool
    not_linked: int  # pool samples without a neighbour link yet
    samples: int  # samples that needed a pass
    passes: int
    unscorable: int
    tokens_run: int
    seconds: float


def score_catalog(
    catalog: Catalog,
    model: str,
    *,
    embedder: str | None = None,
    template: str | None = None,
    max_length: int | None = None,
    device: str = "auto",
    dtype: str | None = None,
    dataset: str | None = None,
    limit: int | None = None,
    token_budget: int | None = None,
    max_batch: int | None = None,
) -> ScoreResult:
    """Compute the missing losses of `model` over the pool.

    Args:
        catalog: the catalog (samples embedded and linked).
        model: an alias (see scoring.models.ALIASES), a local HF folder or a .gguf file.
        embedder: whose neighbours are the one-shot examples (default: minilm, or the only one).
        template: "chat", "alpaca", "alpaca-lf" or a .jinja file (default: chat when the tokenizer has one).
        max_length: longest sequence (default: the model's context, at most 4096).
        device, dtype: default CUDA + bfloat16 when present, else CPU + float32.
        dataset, limit: the pool: all samples, or one dataset; its first `limit` by sample_id.
        token_budget, max_batch: batch shape (defaults per device).
    """
    started = time.monotonic()
    catalog.require()
    spec = resolve_model(model)
    tokenizer = load_tokenizer(spec)
    template = choose_template(tokenizer, template)
    max_length = max_length or default_max_length(spec)
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    dtype_name = str(torch_dtype).removeprefix("torch.")
    links = find_embedder(catalog, embedder)
    with catalog.job("score"):
        scorer = register_scorer(
            catalog, spec.name, spec.source, spec.fingerprint, template.key, max_length, dtype_name
        )
        pool = pending_samples(catalog, scorer.scorer_id, links.embedder_id, dataset, limit)
        recorder = None
        if pool.pending:
            run_id = start_run(catalog, scorer.scorer_id, links.embedder_id, device, pool.samples, len(pool.pending))
            budget, rows, slack, min_tokens = BATCHING["cuda" if device.startswith("cuda") else "cpu"]
            runner = PassRunner(
                load_model(spec, device, torch_dtype),
                SequenceBuilder(tokenizer, template, max_length),
                pad_id(tokenizer),
                token_budget or budget,
                max_batch or rows,
                slack,
                min_tokens,
            )
            with (
                Meter(f"scoring ({spec.name})", len(pool.pending), "samples", "tokens") as meter,
                _Recorder(catalog, scorer.scorer_id, run_id, pool.pending, meter) as recorder,
            ):
                for chunk in _chunks(pool.pending, CHUNK):
                    runner.run(chunk, recorder.emit)
            finish_run(catalog, run_id)
    passes, unscorable, tokens = (recorder.passes, recorder.unscorable, recorder.tokens) if recorder else (0, 0, 0)
    return ScoreResult(
        spec.name,
        scorer.scorer_id,
        template.name,
        max_length,
        device,
        pool.samples,
        pool.not_linked,
        len(pool.pending),
        passes,
        unscorable,
        tokens,
        time.monotonic() - started,
    )


class _Recorder:
    """Receives each batch's results: commits them on a writer thread (in order, one transaction
    each), counts passes and tokens, and advances the progress bar by the samples completed.
    Leaving the block waits for every queued write, also on Ctrl-C, so no finished batch is lost.
    """

    def __init__(
        self, catalog: Catalog, scorer_id: int, run_id: int, pending: list[PendingSample], meter: Meter
    ) -> None:
        self.catalog, self.scorer_id, self.run_id, self.meter = catalog, scorer_id, run_id, meter
        self.needed = {
            (p.sample_id, kind) for p in pending for kind, need in (("zero", p.need_zero), ("one", p.need_one)) if need
        }
        self.remaining = {p.sample_id: p.need_zero + p.need_one for p in pending}
        self.passes = self.unscorable = self.tokens = 0
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog-writer")
        self.writes: list[Future] = []

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.writer.shutdown(wait=True)
        for write in self.writes:
            write.result()

    def emit(self, results: list[PassResult], tokens_run: int) -> None:
        self.writes.append(
            self.writer.submit(save_results, self.catalog, self.scorer_id, self.run_id, results, tokens_run)
        )
        while self.writes and self.writes[0].done():
            self.writes.pop(0).result()  # a failed write surfaces at once
        done = 0
        for result in results:  # an example's zero-shot pass may also serve a sample that had one
            if (result.sample_id, result.kind) in self.needed:
                self.needed.discard((result.sample_id, result.kind))
                self.remaining[result.sample_id] -= 1
                done += self.remaining[result.sample_id] == 0
        self.passes += len(results)
        self.unscorable += sum(r.status != "ok" for r in results)
        self.tokens += tokens_run
        self.meter.advance(done, second=tokens_run)


def _chunks(pending: list[PendingSample], size: int) -> list[list[PendingSample]]:
    """Chunks of samples that keep each sample with its neighbour where possible, so an example's
    zero-shot pass serves the one-shot pass that continues it (components of the neighbour graph)."""
    parent = {p.sample_id: p.sample_id for p in pending}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pending:
        if p.neighbour_id in parent:
            parent[root(p.sample_id)] = root(p.neighbour_id)
    ordered = sorted(pending, key=lambda p: (root(p.sample_id), p.sample_id))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]
