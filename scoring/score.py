"""The score step: the losses of every pool sample that lacks them, for the metrics asked.

Only what is missing is computed: a zero-shot pass where a sample has none for the scorer;
for MIWV a one-shot pass where it has none for its current neighbour; for IFD a response-alone
pass where it has none (it does not depend on neighbours, so a new link never redoes it). The pending pool is planned
from ids (scoring.units) and each unit's messages are read when it runs. Results are
committed by a patient writer thread while compute goes on (scoring.commits): in-process
one transaction per batch, with Ray workers (scoring.ray_pool) one per unit. An interrupted
run waits for the writes already queued, so it loses at most the work in flight.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from catalog import Catalog
from catalog.arguments import metric_names
from catalog.choices import DEFAULT_SCOPE, SCOPES
from catalog.embed import embedders, find_embedder
from catalog.errors import UserError
from catalog.examples import save_lists
from catalog.neighbours import CATALOG_WIDE
from catalog.score import (
    DEFAULT_METRICS,
    PassKind,
    PassResult,
    PendingSample,
    PoolPlan,
    RunPool,
    WorkerRow,
    check_pool,
    finish_run,
    pending_rows,
    plan_pool,
    pool_members,
    register_scorer,
    save_results,
    start_run,
)
from scoring.batching import Batching, bytes_per_token, default_batching, gpu_token_budget
from scoring.commits import PatientWriter, patiently
from scoring.device import DTYPES, pick_device, pick_dtype
from scoring.losses import HEAD_CHUNK
from scoring.models import (
    ModelSpec,
    choose_template,
    default_max_length,
    load_model,
    load_tokenizer,
    pad_id,
    resolve_model,
)
from scoring.passes import PassRunner
from scoring.sequences import SequenceBuilder, start_token
from scoring.templates import Template
from scoring.units import plan_units, unit_size
from terminal.progress import Meter


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
    workers: int = 1
    compute_seconds: float = 0.0  # from every worker having loaded the model to the last result
    metrics: tuple[str, ...] = DEFAULT_METRICS
    zero_shot_passes: int = 0  # passes by kind (their sum is `passes`), unscorable ones included
    one_shot_passes: int = 0
    response_passes: int = 0
    run_id: int | None = None  # the score_run row; None when nothing was pending
    scope: str = DEFAULT_SCOPE  # where the one-shot examples come from: the catalog, or the pool's dataset
    examples: int = 1  # nearest examples per sample that have a one-shot pass (MIWV@1..K)


@dataclass(frozen=True)
class ScorerSetup:
    """Everything a process needs to compute a scorer's losses exactly as any other would
    (sent to every Ray worker, which resolves `spec.source` itself and checks the fingerprint)."""

    spec: ModelSpec
    template: Template
    max_length: int
    dtype: str  # torch dtype name of the weights
    batching: Batching
    fit_memory: bool = False  # on a GPU, set the token budget from its free memory (no --token-budget given)


class UnitScorer:
    """The model loaded once, scoring units of pending samples.

    Args:
        setup: model, template, length limit, dtype and batch shape.
        device: where it runs; with `gpus` > 1, the model is spread over that many GPUs
            (device_map="auto") for models that do not fit one.
    """

    def __init__(self, setup: ScorerSetup, device: str, gpus: int = 1) -> None:
        self.setup = setup
        tokenizer = load_tokenizer(setup.spec)
        self.builder = SequenceBuilder(tokenizer, setup.template, setup.max_length)
        self.pad_id = pad_id(tokenizer)
        dtype = DTYPES[setup.dtype]
        self.model = load_model(setup.spec, device, dtype) if gpus == 1 else _load_spread(setup.spec, dtype)
        self.batching = setup.batching
        if setup.fit_memory and device.startswith("cuda"):
            self.batching = replace(setup.batching, token_budget=_budget_for(self.model))

    def run(self, rows: list[PendingSample], emit: Callable[[list[PassResult], int], None], halvings: int = 0) -> None:
        """Every pass `rows` need; `halvings` times half the token budget and rows (retries after running out
        of memory)."""
        batching = self.batching
        for _ in range(halvings):
            batching = batching.halved()
        PassRunner(self.model, self.builder, self.pad_id, batching).run(rows, emit)


def _budget_for(model) -> int:
    """The token budget the GPU's memory allows now that the weights are on it."""
    import torch

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = bytes_per_token(
        config.num_hidden_layers,
        config.hidden_size,
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim,
        config.intermediate_size,
        model.dtype.itemsize,
    )
    free, _ = torch.cuda.mem_get_info(model.device)
    return gpu_token_budget(free, 0, per_token, 2 * HEAD_CHUNK * config.vocab_size * 4)


def _load_spread(spec: ModelSpec, dtype):
    """The model's layers spread over every GPU this process sees (accelerate moves activations
    between them); the LM head and log-softmax stay chunked (scoring.losses)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, device_map="auto", local_files_only=True).eval()


class UnitProgress:
    """Counts the samples of a unit whose every needed pass has a result (for the progress bar)."""

    def __init__(self, rows: list[PendingSample]) -> None:
        self.needed = {
            (p.sample_id, kind)
            for p in rows
            for kind, need in (
                (PassKind.ZERO, p.need_zero),
                (PassKind.ONE, p.need_one),
                (PassKind.RESPONSE, p.need_response),
            )
            if need
        }
        self.remaining = {p.sample_id: p.need_zero + p.need_one + p.need_response for p in rows}

    def done(self, results: list[PassResult]) -> int:
        finished = 0
        for result in results:  # an example's zero-shot pass may also serve a sample that had one
            if (result.sample_id, result.kind) in self.needed:
                self.needed.discard((result.sample_id, result.kind))
                self.remaining[result.sample_id] -= 1
                finished += self.remaining[result.sample_id] == 0
        return finished


@dataclass
class RunTally:
    """What a run has done so far: passes, unscorable passes, tokens, and since when it computes."""

    passes: int = 0
    unscorable: int = 0
    tokens: int = 0
    compute_started: float | None = None
    compute_ended: float | None = None
    by_kind: dict[PassKind, int] = field(default_factory=lambda: dict.fromkeys(PassKind, 0))

    def computing(self) -> None:
        """Mark the end of loading: the model is in every worker (the first time: a run's later
        phases, the passes with further examples, reuse the loaded model)."""
        if self.compute_started is None:
            self.compute_started = time.monotonic()

    @property
    def compute_seconds(self) -> float:
        if self.compute_started is None or self.compute_ended is None:
            return 0.0
        return self.compute_ended - self.compute_started

    def add(self, results: list[PassResult], tokens: int) -> None:
        self.compute_ended = time.monotonic()
        self.passes += len(results)
        self.unscorable += sum(r.status != "ok" for r in results)
        self.tokens += tokens
        for result in results:
            self.by_kind[result.kind] += 1


@dataclass(frozen=True)
class RunContext:
    """The catalog side of a run: where results go, and how unit rows are read."""

    catalog: Catalog
    scorer_id: int
    embedder_id: int
    run_id: int
    writer: PatientWriter
    meter: Meter
    tally: RunTally
    metrics: tuple[str, ...] = DEFAULT_METRICS
    scope_dataset: str = CATALOG_WIDE
    rank: int = 1  # which listed example the one-shot passes use (1: the neighbour link)

    def rows(self, ids: np.ndarray) -> list[PendingSample]:
        return self.writer.read(
            partial(
                pending_rows,
                self.catalog,
                self.scorer_id,
                self.embedder_id,
                ids,
                self.metrics,
                scope_dataset=self.scope_dataset,
                rank=self.rank,
            )
        )

    def commit(self, results: list[PassResult], tokens: int, worker: WorkerRow, samples_done: int) -> None:
        self.writer.submit(partial(save_results, self.catalog, self.scorer_id, self.run_id, results, tokens, worker))
        self.tally.add(results, tokens)
        self.meter.advance(samples_done, second=tokens)


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
    workers: int | None = None,
    ray_address: str | None = None,
    gpus_per_worker: int = 1,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    pool: RunPool | None = None,
    scope: str = DEFAULT_SCOPE,
    examples: int = 1,
) -> ScoreResult:
    """Compute the missing losses of `model` over the pool for `metrics`.

    Args:
        catalog: the catalog (samples embedded and linked).
        model: an alias (see scoring.models.ALIASES), a local HF folder or a .gguf file.
        embedder: whose neighbours are the one-shot examples (default: minilm, or the only one).
        template: "chat", "alpaca", "alpaca-lf" or a .jinja file (default: chat when the tokenizer has one).
        max_length: longest sequence (default: the model's context, at most 4096).
        device, dtype: default CUDA + bfloat16 when present, else CPU + float32 (with Ray: the
            workers' device, GPUs when the cluster offers them).
        dataset, limit: the pool: all samples, or one dataset; its first `limit` by sample_id.
        token_budget, max_batch: batch shape (defaults per device).
        workers, ray_address: run on a pool of Ray workers: `workers` on this machine, or on the
            cluster at `ray_address` ("auto": the one this machine belongs to). Neither: in-process.
        gpus_per_worker: GPUs each Ray worker spreads its model over (models too big for one GPU).
        metrics: "miwv" (zero-shot and one-shot passes; needs `embed` first) and/or "ifd" (zero-shot
            and response-alone passes; needs no neighbours, nor an embedder).
        pool: a screen (a recorded selection or a condition, resolved to sample ids) and its
            calibration sample: only its samples are scored (within `dataset` and `limit`), and the
            run records it.
        scope: where one-shot examples come from: "catalog" (the nearest other sample anywhere) or
            "dataset" (the nearest other member of `dataset`, which it needs: the paper's setting).
        examples: K: also the one-shot passes with each sample's 2nd..K-th nearest example (found
            now, exactly, and stored as its example list), for MIWV@k and the stability figures.
    """
    started = time.monotonic()
    catalog.require()
    metrics = metric_names("metrics", metrics)  # the API checked them already; a direct caller may not have
    spec = resolve_model(model)
    tokenizer = load_tokenizer(spec)
    template = choose_template(tokenizer, template)
    max_length = max_length or default_max_length(spec)
    if "ifd" in metrics:
        start_token(tokenizer)  # a tokenizer with no BOS nor EOS is refused before anything is written
    scope_dataset = _scope_dataset(scope, dataset, examples, metrics)
    embedder_id = _embedder_id(catalog, embedder, metrics)
    check_pool(catalog, dataset)
    cluster = None
    try:  # a cluster joined is closed whatever fails after it
        if workers is not None or ray_address is not None:
            from scoring.ray_pool import RayCluster

            cluster = RayCluster.connect(workers, ray_address, gpus_per_worker, device)
            device = cluster.device
        else:
            device = pick_device(device)
        torch_dtype = pick_dtype(device, dtype)
        setup = ScorerSetup(
            spec,
            template,
            max_length,
            str(torch_dtype).removeprefix("torch."),
            default_batching(device).override(token_budget, max_batch),
            fit_memory=token_budget is None,
        )
        with catalog.job("score"):
            key = (spec.name, spec.source, spec.fingerprint, template.key, max_length, setup.dtype, template.text)
            scorer = patiently(partial(register_scorer, catalog, *key))
            pool_ids = pool.ids if pool is not None else None
            plan_at = partial(_plan, catalog, scorer.scorer_id, embedder_id, dataset, limit, metrics, pool_ids)
            if examples > 1:
                _list_examples(
                    catalog,
                    embedder_id,
                    scope_dataset,
                    pool_members(catalog, dataset, limit, pool_ids),
                    examples,
                    device,
                )
            plans = [plan_at(scope_dataset, rank) for rank in range(1, examples + 1)]
            plan = plans[0]
            pending = np.unique(np.concatenate([p.ids for p in plans]))
            tally = RunTally()
            run_id = None
            n_workers = cluster.workers if cluster else 1
            # A screened run is recorded even with nothing to compute: its calibration sample is what select reads.
            if len(pending) or pool is not None:
                run_id = patiently(
                    lambda: start_run(
                        catalog,
                        scorer.scorer_id,
                        embedder_id,
                        device,
                        plan.samples,
                        len(pending),
                        n_workers,
                        metrics,
                        pool,
                        scope_dataset=scope_dataset,
                        examples=examples,
                    )
                )
            if len(pending):
                with (
                    Meter(f"scoring ({spec.name})", sum(len(p.ids) for p in plans), "samples", "tokens") as meter,
                    PatientWriter() as writer,
                ):
                    scorer_here = None
                    for rank, ranked in enumerate(plans, start=1):
                        if not len(ranked.ids):
                            continue
                        units = plan_units(ranked, unit_size(len(ranked.ids), n_workers))
                        context = RunContext(
                            catalog, scorer.scorer_id, embedder_id, run_id, writer, meter, tally,
                            metrics if rank == 1 else ("miwv",), scope_dataset, rank,
                        )  # fmt: skip
                        if cluster:
                            cluster.score(setup, units, context)
                        else:
                            scorer_here = scorer_here or UnitScorer(setup, device)
                            _score_here(scorer_here, device, units, context)
            if run_id is not None:
                patiently(lambda: finish_run(catalog, run_id))
    finally:
        if cluster:
            cluster.close()
    return ScoreResult(
        spec.name,
        scorer.scorer_id,
        template.name,
        max_length,
        device,
        plan.samples,
        plan.not_linked,
        len(pending),
        tally.passes,
        tally.unscorable,
        tally.tokens,
        time.monotonic() - started,
        cluster.workers if cluster else 1,
        tally.compute_seconds,
        metrics,
        tally.by_kind[PassKind.ZERO],
        tally.by_kind[PassKind.ONE],
        tally.by_kind[PassKind.RESPONSE],
        run_id,
        scope,
        examples,
    )


def _scope_dataset(scope: str, dataset: str | None, examples: int, metrics: tuple[str, ...]) -> str:
    """The scope_dataset whose links give the one-shot examples; UserError for a scope the run cannot use."""
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    if scope == "dataset" and dataset is None:
        raise UserError("--scope dataset takes each sample's example from one dataset: name it with --dataset")
    if examples > 1 and "miwv" not in metrics:
        raise UserError("--examples counts MIWV's one-shot examples: add miwv to --metrics")
    return dataset if scope == "dataset" else CATALOG_WIDE


def _plan(
    catalog: Catalog,
    scorer_id: int,
    embedder_id: int,
    dataset: str | None,
    limit: int | None,
    metrics: tuple[str, ...],
    pool_ids: np.ndarray | None,
    scope_dataset: str,
    rank: int,
) -> PoolPlan:
    """The pool's pending passes with the rank-th example (rank 1 computes every metric, later ranks
    only their one-shot passes)."""
    metrics = metrics if rank == 1 else ("miwv",)
    return plan_pool(
        catalog, scorer_id, embedder_id, dataset, limit, metrics, pool_ids, scope_dataset=scope_dataset, rank=rank
    )


def _list_examples(
    catalog: Catalog, embedder_id: int, scope_dataset: str, pool: np.ndarray, k: int, device: str
) -> None:
    """Find and store the K nearest examples of every pool sample in the scope (exact, as links are)."""
    from scoring.examples import nearest_examples
    from scoring.neighbours import current_points

    (embedder,) = [row for row in embedders(catalog) if row.embedder_id == embedder_id]
    points = current_points(catalog, embedder.vectors(catalog).load(), scope_dataset)
    queries = points.subset(np.isin(points.ids, pool))
    ids, similarity = nearest_examples(queries, points, k, device=device)
    patiently(partial(save_lists, catalog, embedder_id, scope_dataset, queries.ids, ids, similarity))


NO_EMBEDDER = 0  # score_run.embedder_id of an IFD-only run in a catalog with no embedder (no links are read)


def _embedder_id(catalog: Catalog, embedder: str | None, metrics: tuple[str, ...]) -> int:
    """The embedder whose links MIWV's one-shot passes follow. IFD needs none: without "miwv" the run
    records the one `embedder` names, else the default one if the catalog has any, else NO_EMBEDDER."""
    if "miwv" in metrics or embedder is not None:
        return find_embedder(catalog, embedder).embedder_id
    try:
        return find_embedder(catalog).embedder_id
    except UserError:  # none, or several and none of them the default: an IFD run reads no link either way
        rows = embedders(catalog)
        return rows[0].embedder_id if rows else NO_EMBEDDER


def _score_here(scorer: UnitScorer, device: str, units: list[np.ndarray], context: RunContext) -> None:
    """Score every unit in this process with the loaded `scorer`, committing each batch as it finishes."""
    worker = WorkerRow(0, platform.node(), device)
    context.tally.computing()
    for ids in units:
        rows = context.rows(ids)
        progress = UnitProgress(rows)
        scorer.run(
            rows,
            lambda results, tokens, progress=progress: context.commit(results, tokens, worker, progress.done(results)),
        )
