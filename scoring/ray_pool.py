"""Run units of work on a pool of Ray actors, one per GPU (or CPU share), from a driver that
alone touches the catalog.

Plain actors and `ray.wait` rather than Ray Data's `map_batches`: a unit whose worker raised
(CUDA out of memory) must come back with half the token budget, a unit whose worker died must
go to a replacement actor, and every finished unit must be committed by the driver as soon as
it lands. With actors each of these is a line of the loop below; with Ray Data each would fight
its own retry and output ordering. The driver keeps two units queued per worker, so a worker
never waits for the driver, and reads a unit's rows only when it is dispatched.

Local pools (`--workers N`) start Ray as children of the driver with Linux's parent-death signal
(Ray's own fate sharing) and a reaper (scoring/ray_reaper.py) for the agents that outlive it, so
a driver killed with SIGKILL leaves no process behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.errors import UserError
from catalog.score import WorkerRow

REPO = Path(__file__).resolve().parent.parent
IN_FLIGHT = 2  # tasks queued per worker
DEATHS_PER_TASK = 3  # a task whose worker died this often stops the run
LOCAL_OBJECT_STORE = 256 << 20  # bytes; units and results are small
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "MIWV_CACHE", "TOKENIZERS_PARALLELISM")
UPLOAD_EXCLUDES = [".venv", ".git", "bench/out", "*.duckdb", "*.duckdb.wal", "vectors", "demo-*"]


class WeightsMismatch(UserError):
    """A worker's local copy of the model differs from the driver's: a run never mixes weights."""


@dataclass(frozen=True)
class Placement:
    """How many workers, and what each one asks Ray for."""

    workers: int
    device: str  # "cuda" or "cpu"
    gpus: int  # per worker
    threads: int  # torch threads per CPU worker (the cores split between them)


def place(cpus: int, gpus: int, workers: int | None, gpus_per_worker: int, device: str) -> Placement:
    """One worker per `gpus_per_worker` GPUs when there are GPUs (and `device` allows them), else
    `workers` CPU workers splitting the cores; UserError when the cluster cannot hold them."""
    if device.startswith("cuda") and gpus == 0:
        raise UserError(f"--device {device} asked for, but the Ray cluster offers no GPU")
    if gpus and device != "cpu":
        fits = gpus // gpus_per_worker
        if fits == 0 or (workers or 0) > fits:
            raise UserError(
                f"{workers or 1} workers x {gpus_per_worker} GPUs asked for, but the Ray cluster offers {gpus} GPUs"
            )
        return Placement(workers or fits, "cuda", gpus_per_worker, 1)
    count = workers or max(1, cpus)
    return Placement(count, "cpu", 0, max(1, cpus // count))


@dataclass
class _Task:
    payload: Any
    deaths: int = 0


@dataclass
class _Slot:
    actor: Any
    number: int
    ready: Any  # ObjectRef of its load(): (node id, device)
    worker: WorkerRow | None = None  # known once the actor has loaded
    tasks: int = 0

    def row(self) -> WorkerRow:
        """Who this worker is; a load() that raised a UserError (other weights) raises it as it is."""
        import ray

        if self.worker is None:
            try:
                self.worker = WorkerRow(self.number, *ray.get(self.ready))
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, UserError):
                    raise error.cause from None
                raise
        return self.worker


@dataclass
class ActorPool:
    """A fixed number of actors made by `make(number)` (each loaded by its `load()` method, which
    returns its node id and device); a dead actor is replaced by a new one with the next number."""

    make: Callable[[int], Any]
    size: int
    slots: list[_Slot] = field(default_factory=list)
    started: int = 0

    def __post_init__(self) -> None:
        self.slots = [self._new_slot() for _ in range(self.size)]

    def _new_slot(self) -> _Slot:
        actor = self.make(self.started)
        slot = _Slot(actor, self.started, actor.load.remote())
        self.started += 1
        return slot

    def wait_loaded(self) -> None:
        """Block until every worker has loaded (a refused fingerprint is raised here)."""
        for slot in self.slots:
            slot.row()

    def run(
        self,
        payloads: Iterable[Any],
        call: Callable[[Any, Any], Any],
        done: Callable[[Any, Any, WorkerRow], None],
        retry: Callable[[Any, Exception], Any | None],
    ) -> list[tuple[Any, Exception]]:
        """Run every payload: `call(actor, payload)` returns an ObjectRef, `done(payload, result,
        worker)` takes each result as it lands (any order). A payload whose actor died runs again
        on a replacement; one whose actor raised goes back as `retry(payload, error)` (None: give
        up). Returns the payloads given up on, with their errors; everything else has been done.
        """
        import ray

        queue = deque(_Task(p) for p in payloads)
        in_flight: dict[Any, tuple[_Task, _Slot]] = {}
        failed: list[tuple[Any, Exception]] = []
        while queue or in_flight:
            for slot in self.slots:
                while queue and slot.tasks < IN_FLIGHT:
                    task = queue.popleft()
                    in_flight[call(slot.actor, task.payload)] = (task, slot)
                    slot.tasks += 1
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            task, slot = in_flight.pop(ref)
            slot.tasks -= 1
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as died:
                task.deaths += 1
                if task.deaths > DEATHS_PER_TASK:
                    failed.append((task.payload, died))
                else:
                    queue.appendleft(task)
                if slot in self.slots:
                    self._replace(slot)
            except ray.exceptions.RayTaskError as raised:
                if isinstance(raised, WeightsMismatch):
                    raise
                again = retry(task.payload, raised)
                if again is None:
                    failed.append((task.payload, raised))
                else:
                    queue.appendleft(_Task(again, task.deaths))
            else:
                done(task.payload, result, slot.row())
        return failed

    def _replace(self, dead: _Slot) -> None:
        import ray

        ray.kill(dead.actor, no_restart=True)
        self.slots[self.slots.index(dead)] = self._new_slot()

    def close(self) -> None:
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)


def worker_env() -> dict[str, str]:
    """Environment every worker needs: this repository importable, offline model resolution."""
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    return env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


class RayCluster:
    """The Ray side of a run: connects (or starts a local Ray), places workers, and closes.

    Use `connect`; `score` and `embed` run a job's units on it.
    """

    def __init__(self, placement: Placement, reaper: subprocess.Popen | None) -> None:
        self.placement, self.reaper = placement, reaper
        self.device, self.workers = placement.device, placement.workers

    @classmethod
    def connect(cls, workers: int | None, address: str | None, gpus_per_worker: int, device: str) -> RayCluster:
        """Join the cluster at `address` ("auto": this machine's), reuse a Ray already started in
        this process, or start a local one that dies with this process."""
        import ray
        import torch

        reaper = None
        if not ray.is_initialized():
            if address:
                ray.init(
                    address=address,
                    runtime_env={"working_dir": str(REPO), "excludes": UPLOAD_EXCLUDES, "env_vars": worker_env()},
                    log_to_driver=False,
                )
            else:
                reaper = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("ray_reaper.py")), str(os.getpid())],
                    start_new_session=True,
                )
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count(),
                    num_gpus=torch.cuda.device_count() if device != "cpu" else 0,
                    include_dashboard=False,
                    object_store_memory=LOCAL_OBJECT_STORE,
                    runtime_env={"env_vars": worker_env()},
                    log_to_driver=False,
                )
        resources = ray.cluster_resources()
        placement = place(int(resources.get("CPU", 1)), int(resources.get("GPU", 0)), workers, gpus_per_worker, device)
        return cls(placement, reaper)

    def actor_options(self) -> dict[str, Any]:
        if self.placement.device == "cuda":
            return {"num_gpus": self.placement.gpus, "num_cpus": 1, "max_restarts": 0}
        return {"num_cpus": self.placement.threads, "max_restarts": 0}

    def score(self, setup, units: list, context) -> None:
        from scoring.ray_workers import run_score

        run_score(self, setup, units, context)

    def close(self) -> None:
        import ray

        if self.reaper is not None:  # this process started Ray: stop it, then its watcher
            ray.shutdown()
            self.reaper.terminate()
            self.reaper.wait()
