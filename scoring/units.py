"""Work units of a score run: groups of pending samples planned from ids alone.

A unit keeps a sample with its neighbour where it can (connected components of the neighbour
graph), so an example's zero-shot pass, kept with its KV cache, serves the one-shot passes
that continue it in the same unit. Units hold ids only; their messages are read from the
catalog when a unit is about to run, so a pool of millions is planned in little memory.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from catalog.score import PoolPlan

CHUNK = 512  # samples per unit in-process (examples shared within a unit)
MIN_UNIT = 8  # samples per unit at least when units are spread over workers
UNITS_PER_WORKER = 4  # so the last units of a run leave few workers idle


def unit_size(pending: int, workers: int) -> int:
    """Samples per unit: CHUNK in-process; with workers, small enough that each gets several units."""
    if workers <= 1:
        return CHUNK
    return max(MIN_UNIT, min(CHUNK, math.ceil(pending / (workers * UNITS_PER_WORKER))))


def plan_units(plan: PoolPlan, size: int) -> list[np.ndarray]:
    """The pending sample ids cut into units of at most `size`, each neighbour-graph component
    contiguous (a component larger than `size` spans consecutive units)."""
    n = len(plan.ids)
    if n == 0:
        return []
    target = np.searchsorted(plan.ids, plan.neighbour_ids).clip(max=n - 1)
    linked = plan.ids[target] == plan.neighbour_ids  # neighbour is pending too
    rows = np.flatnonzero(linked)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, target[linked])), shape=(n, n))
    _, component = connected_components(graph, directed=True, connection="weak")
    ordered = plan.ids[np.argsort(component, kind="stable")]
    return [ordered[start : start + size] for start in range(0, n, size)]
