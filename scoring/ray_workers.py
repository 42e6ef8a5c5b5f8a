"""The Ray actors of `score --workers` and `embed --workers`, and the driver loops that feed them.

A worker never opens the catalog: it gets a unit's rows (or texts) from the driver and sends
back results carrying their ids. Each worker resolves the model from the same source on its
own node (HF cache, folder, or the GGUF converted in its own cache) and refuses to run when
its fingerprint differs from the driver's, so a run never mixes weights.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace

import numpy as np

from catalog.errors import UserError
from catalog.score import PassResult, PendingSample, WorkerRow
from scoring.ray_pool import ActorPool, RayCluster, WeightsMismatch


def _where() -> tuple[str, str]:
    """(node id, device) of the calling Ray worker."""
    import ray

    context = ray.get_runtime_context()
    gpus = context.get_accelerator_ids().get("GPU", [])
    return context.get_node_id(), f"cuda:{','.join(gpus)}" if gpus else "cpu"


def _refuse_other_weights(kind: str, name: str, expected: str, found: str) -> None:
    if found != expected:
        raise WeightsMismatch(
            f"{kind} {name!r} on node {socket.gethostname()} ({_where()[0][:12]}) has fingerprint {found[:16]}, "
            f"but the driver's is {expected[:16]}: put the same weights on every node (no run mixes weights)"
        )


class ScoreWorker:
    """Holds the model once and scores units of pending samples.

    Args:
        setup: the driver's ScorerSetup (its spec's fingerprint is the one to match).
        gpus: GPUs this worker spreads its model over (0: CPU).
        threads: torch threads on a CPU worker.
    """

    def __init__(self, setup, gpus: int, threads: int) -> None:
        self.setup, self.gpus, self.threads = setup, gpus, threads
        self.scorer = None

    def load(self) -> tuple[str, str]:
        """Resolve and load the model on this node; returns (node id, device)."""
        import torch

        from scoring.models import ALIASES, resolve_model
        from scoring.score import UnitScorer

        if not self.gpus:
            torch.set_num_threads(self.threads)
        spec = self.setup.spec  # an alias resolves on this node; a path is the driver's absolute one
        local = resolve_model(spec.name if spec.name in ALIASES else spec.source)
        _refuse_other_weights("model", self.setup.spec.name, self.setup.spec.fingerprint, local.fingerprint)
        self.scorer = UnitScorer(replace(self.setup, spec=local), "cuda" if self.gpus else "cpu", max(1, self.gpus))
        return _where()

    def score(self, rows: list[PendingSample], halvings: int) -> tuple[list[PassResult], int]:
        """Every pass the unit needs, with the token budget and rows halved `halvings` times: (results, tokens run)."""
        import torch

        results: list[PassResult] = []
        tokens = [0]

        def keep(batch: list[PassResult], run: int) -> None:
            results.extend(batch)
            tokens[0] += run

        try:
            self.scorer.run(rows, keep, halvings)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # an out-of-memory retry starts from a clean allocator
        return results, tokens[0]


@dataclass(frozen=True)
class _Unit:
    ids: np.ndarray
    halvings: int = 0  # retries after the worker raised: each halves the token budget and rows


class UnitFailed(UserError):
    """Units that failed even one row at a time; everything else of the run is committed."""


def run_score(cluster: RayCluster, setup, units: list[np.ndarray], context) -> None:
    """Score `units` on the cluster's workers, committing each unit's results as it lands.

    A unit whose worker raised (CUDA out of memory, say) runs again with half the token budget
    and rows, down to one row; then the run finishes the other units and stops with a message.
    """
    import ray

    from scoring.score import UnitProgress

    actor = ray.remote(ScoreWorker).options(**cluster.actor_options())
    placement = cluster.placement
    pool = ActorPool(lambda number: actor.remote(setup, placement.gpus, placement.threads), cluster.workers)
    rows: dict[int, list[PendingSample]] = {}  # id(unit.ids) -> rows, while the unit is out

    def call(worker, unit: _Unit):
        key = id(unit.ids)
        if key not in rows:
            rows[key] = context.rows(unit.ids)
        return worker.score.remote(rows[key], unit.halvings)

    def done(unit: _Unit, result: tuple[list[PassResult], int], worker: WorkerRow) -> None:
        results, tokens = result
        unit_rows = rows.pop(id(unit.ids))
        context.commit(results, tokens, worker, UnitProgress(unit_rows).done(results))

    def retry(unit: _Unit, error: Exception) -> _Unit | None:
        return None if setup.batching.max_rows >> unit.halvings <= 1 else replace(unit, halvings=unit.halvings + 1)

    try:
        pool.wait_loaded()
        context.tally.computing()
        failed = pool.run((_Unit(ids) for ids in units), call, done, retry)
    finally:
        pool.close()
    if failed:
        samples = sum(len(unit.ids) for unit, _ in failed)
        raise UnitFailed(
            f"{len(failed)} units ({samples} samples) failed even one row at a time: {_first_line(failed[0][1])}; "
            "every other unit is committed, run `score` again to retry them"
        )


def _first_line(error: Exception) -> str:
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"


class EmbedWorker:
    """Holds a sentence-embedding model once and encodes chunks of texts."""

    def __init__(self, spec, batch_size: int, gpus: int, threads: int) -> None:
        self.spec, self.batch_size, self.gpus, self.threads = spec, batch_size, gpus, threads
        self.model = None

    def load(self) -> tuple[str, str]:
        import torch

        from scoring.embed import Embedder, resolve_embedder

        if not self.gpus:
            torch.set_num_threads(self.threads)
        local = resolve_embedder(self.spec.name, self.spec.pooling)  # an alias, or the driver's absolute path
        _refuse_other_weights("embedder", self.spec.name, self.spec.fingerprint, local.fingerprint)
        self.model = Embedder(local, "cuda" if self.gpus else "cpu", self.batch_size)
        return _where()

    def encode(self, ids: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return ids, self.model.encode(texts)


def run_embed(cluster: RayCluster, spec, batch_size: int, chunks, add) -> None:
    """Encode `chunks` of (ids, texts) on the cluster's workers; `add(ids, vectors)` as each lands."""
    import ray

    actor = ray.remote(EmbedWorker).options(**cluster.actor_options())
    pool = ActorPool(
        lambda number: actor.remote(spec, batch_size, cluster.placement.gpus, cluster.placement.threads),
        cluster.workers,
    )
    try:
        pool.wait_loaded()
        failed = pool.run(
            chunks,
            lambda worker, chunk: worker.encode.remote(*chunk),
            lambda chunk, result, worker: add(*result),
            lambda chunk, error: None,
        )
    finally:
        pool.close()
    if failed:
        raise UserError(f"{len(failed)} chunks could not be embedded: {_first_line(failed[0][1])}; run `embed` again")
