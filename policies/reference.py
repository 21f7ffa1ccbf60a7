"""The slow, obviously correct allocation that `policies.capping.allocate` must equal.

Event-driven progressive filling, written for clarity rather than speed: in each phase every
unfrozen GPU rises at its own gain; the next event is the first group (any level) whose slack
runs out; every GPU under it freezes; repeat until the phase completes. It shares no code with
the vectorized kernel beyond the topology, and recomputes every group's slack from the per-GPU
caps at every event, so the two agreeing on random instances is evidence of both being right.
Used by tests and benchmarks only.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.tiers import N_TIERS
from policies.topology import Topology

FloatArray = NDArray[np.float64]


def allocate_reference(
    topology: Topology,
    *,
    floor_w: FloatArray,
    demand_w: FloatArray,
    max_w: FloatArray,
    tier: NDArray[np.int8],
    usable_w: tuple[FloatArray, ...],
    tier_floor_w: FloatArray | None = None,
) -> tuple[FloatArray, tuple[NDArray[np.bool_], ...]]:
    """Caps and per-level infeasible flags under the semantics of `policies.capping`. Units: W.

    Phases in order: each tier's rise to its tier floor (Flex 0 first), each tier's rise from
    there to its demand (Flex 0 first), then every GPU's rise to its max cap.
    """
    n = topology.n_gpus
    levels = topology.levels
    groups = topology.gpu_group
    overhead = [topology.overhead_under(k) for k in range(len(levels))]
    cap = np.asarray(floor_w, dtype=np.float64).copy()

    def group_sum(k: int, per_gpu: FloatArray) -> FloatArray:
        sums = np.bincount(groups[k], weights=per_gpu, minlength=levels[k].size)
        return sums.astype(np.float64)

    def slack(k: int) -> FloatArray:
        return usable_w[k] - (group_sum(k, cap) + overhead[k])

    infeasible = tuple(
        slack(k) < -1e-9 * np.maximum(np.abs(usable_w[k]), 1.0) for k in range(len(levels))
    )
    mid = floor_w if tier_floor_w is None else tier_floor_w
    phases: list[tuple[NDArray[np.bool_], FloatArray]] = [
        (tier == t, mid - floor_w) for t in range(N_TIERS)
    ]
    phases += [(tier == t, demand_w - mid) for t in range(N_TIERS)]
    phases.append((np.ones(n, dtype=np.bool_), max_w - demand_w))
    for in_phase, gain_all in phases:
        gain = np.where(in_phase, gain_all, 0.0)
        start = cap.copy()
        rising = gain > 0
        theta = 0.0
        while rising.any():
            # Time (in theta) until each group with rising GPUs runs out of slack.
            rooms = []
            for k in range(len(levels)):
                rate = group_sum(k, np.where(rising, gain, 0.0))
                with np.errstate(divide="ignore", invalid="ignore"):
                    room = np.where(rate > 0, np.maximum(slack(k), 0.0) / rate, np.inf)
                rooms.append(room)
            step = min(1.0 - theta, *(float(r.min()) for r in rooms))
            theta += step
            cap = np.where(rising, start + theta * gain, cap)
            if theta >= 1.0:
                break
            for k, room in enumerate(rooms):
                full = np.flatnonzero(room <= step * (1 + 1e-12) + 1e-300)
                rising &= ~np.isin(groups[k], full)
    return cap, infeasible
