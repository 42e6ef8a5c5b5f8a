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
a driver killed with SIGKILL leaves no process behind. Their services listen on 127.0.0.1 only.

Nothing waits silently: the workers asked for are checked against what the cluster offers before
anything is started or written, their resources are reserved (a placement group) within
PLACEMENT_WAIT_S, and an address is checked and joined within CONNECT_WAIT_S and JOIN_WAIT_S.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.errors import ArgumentError, UserError
from catalog.score import WorkerRow

REPO = Path(__file__).resolve().parent.parent
IN_FLIGHT = 2  # tasks queued per worker
DEATHS_PER_TASK = 3  # a task whose worker died this often stops the run
LOCAL_OBJECT_STORE = 256 << 20  # bytes; units and results are small
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "MIWV_CACHE", "TOKENIZERS_PARALLELISM")
UPLOAD_EXCLUDES = [".venv", ".git", "bench/out", "*.duckdb", "*.duckdb.wal", "vectors", "demo-*"]
CONNECT_WAIT_S = 5  # for a TCP answer at --ray-address
JOIN_WAIT_S = 25  # for ray.init to join the cluster that answered
PLACEMENT_WAIT_S = 60  # for the cluster to find room for every worker
ADDRESS = re.compile(r"(?P<scheme>ray://)?(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


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
    `workers` CPU workers splitting the cores. Every worker needs a CPU of its own: asking for more
    than the cluster has is refused here, since Ray would wait for them forever."""
    if device.startswith("cuda") and gpus == 0:
        raise UserError(f"--device {device} asked for, but the Ray cluster offers no GPU")
    if workers is not None and workers > cpus:
        raise ArgumentError(
            f"{{0}} {workers} is more than the Ray cluster's {cpus} CPUs can host (each worker needs one): "
            f"use {{0}} {cpus} or fewer",
            "workers",
        )
    if gpus and device != "cpu":
        fits = gpus // gpus_per_worker
        if fits == 0 or (workers or 0) > fits:
            raise UserError(
                f"{workers or 1} workers x {gpus_per_worker} GPUs asked for, but the Ray cluster offers {gpus} GPUs"
            )
        return Placement(workers or min(fits, max(1, cpus)), "cuda", gpus_per_worker, 1)
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
    """The Ray side of a run: connects (or starts a local Ray), reserves the workers' resources,
    and closes.

    Use `connect`; `score` and `embed` run a job's units on it.
    """

    def __init__(self, placement: Placement, reaper: subprocess.Popen | None, group: Any) -> None:
        self.placement, self.reaper, self.group = placement, reaper, group
        self.device, self.workers = placement.device, placement.workers

    @classmethod
    def connect(cls, workers: int | None, address: str | None, gpus_per_worker: int, device: str) -> RayCluster:
        """Join the cluster at `address` ("auto": this machine's), reuse a Ray already started in
        this process, or start a local one that dies with this process; then reserve the workers."""
        import ray

        check_request(workers, address, gpus_per_worker, device)
        reaper = None
        if not ray.is_initialized():
            if address is not None:
                join(address)
            else:
                reaper = start_local(os.cpu_count() or 1, _local_gpus(device))
        try:
            resources = ray.cluster_resources()
            placement = place(
                int(resources.get("CPU", 1)), int(resources.get("GPU", 0)), workers, gpus_per_worker, device
            )
            return cls(placement, reaper, reserve(placement))
        except BaseException:
            stop_local(reaper)
            raise

    def actor_options(self) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = _bundle(self.placement)
        return {
            "num_cpus": bundle["CPU"],
            "num_gpus": bundle.get("GPU", 0),
            "max_restarts": 0,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(self.group),
        }

    def score(self, setup, units: list, context) -> None:
        from scoring.ray_workers import run_score

        run_score(self, setup, units, context)

    def close(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)
        stop_local(self.reaper)  # when this process started Ray: stop it, then its watcher


def check_request(workers: int | None, address: str | None, gpus_per_worker: int, device: str) -> None:
    """Refuse at once, before Ray is started or joined, what cannot be served: an address that is
    not one, or more workers than this machine can host (when this process would start the Ray)."""
    if address is not None:
        if address != "auto":
            _host_port(address)
    elif not _ray_running_here():
        place(os.cpu_count() or 1, _local_gpus(device), workers, gpus_per_worker, device)


def _ray_running_here() -> bool:
    ray = sys.modules.get("ray")  # not imported: not running (and importing it takes seconds)
    return ray is not None and ray.is_initialized()


def _local_gpus(device: str) -> int:
    import torch

    return torch.cuda.device_count() if device != "cpu" else 0


def _bundle(placement: Placement) -> dict[str, int]:
    """What one worker asks Ray for."""
    if placement.device == "cuda":
        return {"GPU": placement.gpus, "CPU": 1}
    return {"CPU": placement.threads}


def reserve(placement: Placement) -> Any:
    """A placement group holding every worker's resources, once the cluster has found room for
    them; UserError after PLACEMENT_WAIT_S when it has not (busy, or resources that never come)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = _bundle(placement)
    group = placement_group([bundle] * placement.workers, strategy="SPREAD")
    if not group.wait(PLACEMENT_WAIT_S):
        remove_placement_group(group)
        available = ray.available_resources()
        free = {name: available.get(name, 0) for name in bundle}
        raise UserError(
            f"the Ray cluster found no room for {placement.workers} workers ({_resources(bundle)} each) within "
            f"{PLACEMENT_WAIT_S} s, having {_resources(free)} free: ask for fewer workers, or free resources"
        )
    return group


def _resources(amounts: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in amounts.items())


def start_local(cpus: int, gpus: int, object_store_memory: int = LOCAL_OBJECT_STORE) -> subprocess.Popen:
    """Start a Ray on this machine, its services listening on 127.0.0.1 only, watched by a reaper
    that kills what it started if this process dies; returns the reaper."""
    import ray

    reaper = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ray_reaper.py")), str(os.getpid())], start_new_session=True
    )
    try:
        with _loopback_only():
            ray.init(
                address="local",
                num_cpus=cpus,
                num_gpus=gpus,
                include_dashboard=False,
                object_store_memory=object_store_memory,
                runtime_env={"env_vars": worker_env()},
                log_to_driver=False,
            )
    except BaseException:
        stop_local(reaper)
        raise
    return reaper


_CLUSTERS_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While Ray starts, make it take 127.0.0.1 for this node's address, which its services bind to.

    Ray takes the outward address (and its services then listen on every interface) unless clusters
    are turned off for the platform, as on macOS and Windows: then it uses the loopback address.
    Ray reads the setting when imported, and the processes it starts inherit it from the environment.
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_CLUSTERS_FLAG), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS_FLAG], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_CLUSTERS_FLAG)
        else:
            os.environ[_CLUSTERS_FLAG] = saved_env


def stop_local(reaper: subprocess.Popen | None) -> None:
    if reaper is not None:
        import ray

        ray.shutdown()
        reaper.terminate()
        reaper.wait()


def join(address: str) -> None:
    """Join the cluster at `address`, or say in one line why not, within CONNECT_WAIT_S + JOIN_WAIT_S.

    Ray itself retries an address where no cluster answers for minutes, logging a line a second,
    so it joins on a helper thread that is given up on (left to end on its own) after JOIN_WAIT_S,
    with Ray's driver-side logging cut to errors. Off the main thread Ray cannot set its SIGTERM
    handler (exit, so that Ray shuts down cleanly): it is set here.
    """
    if address != "auto":
        _answers(address)
    import ray

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # read by the driver's core worker as it starts
    outcome: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(
                address=address,
                runtime_env={"working_dir": str(REPO), "excludes": UPLOAD_EXCLUDES, "env_vars": worker_env()},
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    joining = threading.Thread(target=init, name="ray-join", daemon=True)
    joining.start()
    joining.join(JOIN_WAIT_S)
    if joining.is_alive():
        raise ArgumentError(
            f"{{0}} {_braced(address)} accepts connections but did not answer as a Ray cluster within {JOIN_WAIT_S} s: "
            "give the head node's address (`ray status` there shows it)",
            "ray_address",
        )
    if "error" in outcome:
        error = outcome["error"]
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]  # not Ray's advice
        raise ArgumentError(
            f"cannot join the Ray cluster at {{0}} {_braced(address)}: {_braced(reason)}", "ray_address"
        ) from None


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" or "ray://HOST:PORT"; ArgumentError for anything else."""
    match = ADDRESS.fullmatch(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ArgumentError(
            "{0} is not a Ray address: give 'auto' (this machine's cluster) or the head node's HOST:PORT "
            "(e.g. 10.0.0.5:6379, or ray://10.0.0.5:10001 for Ray Client)",
            "ray_address",
            detail=f"got {address!r}",
        )
    return match["host"].strip("[]"), int(match["port"])


def _answers(address: str) -> None:
    """ArgumentError unless something accepts a connection at `address` within CONNECT_WAIT_S."""
    try:
        socket.create_connection(_host_port(address), timeout=CONNECT_WAIT_S).close()
    except OSError as error:
        reason = _braced(error.strerror or str(error) or type(error).__name__)
        raise ArgumentError(
            f"no Ray cluster answers at {{0}} {_braced(address)} ({reason}; waited at most {CONNECT_WAIT_S} s): "
            "start one there (`ray start --head`) or correct the address",
            "ray_address",
        ) from None


def _braced(text: str) -> str:
    """`text` as it should read inside an ArgumentError template."""
    return text.replace("{", "{{").replace("}", "}}")
