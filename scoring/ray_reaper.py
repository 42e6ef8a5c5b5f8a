"""Watches a driver that started a local Ray and, if the driver dies (even by SIGKILL), kills
every process it had started.

Ray's GCS and raylet die with their parent (Linux parent-death signal), but the raylet's agents
(dashboard and runtime-env agents) only notice after several health checks and a log flush to
a GCS that is gone, which can take minutes. This process remembers the driver's descendants
while the driver lives and kills those still running once it is gone.

Run by scoring.ray_pool as: python scoring/ray_reaper.py DRIVER_PID
"""

from __future__ import annotations

import os
import sys
import time

import psutil

POLL_S = 0.5


def watch(driver_pid: int) -> None:
    driver = psutil.Process(driver_pid)
    family: dict[int, psutil.Process] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            family |= {p.pid: p for p in driver.children(recursive=True) if p.pid != os.getpid()}
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    for process in family.values():
        try:
            process.kill()  # is_running() inside guards against a reused pid
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
