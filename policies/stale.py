"""Racks without telemetry (stale), counted at their worst case.

Each GPU of a stale rack may draw up to the cap in force (the last one issued, or the max cap on
a cold start, when nothing is known). That power stays reserved for them while the limits allow
it, so a command they may not hear frees nothing another GPU could take; where the limits no
longer allow it (a contract or demand-response step while every rack is blind) they are cut at
once, like any other GPU, since commands still go to them. Their caps are never raised.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.capping import REL_TOL, allocate
from policies.errors import PolicyError
from policies.plan import CappingPlan
from policies.workspace import DecisionWorkspace

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


def stale_gpus(plan: CappingPlan, stale_rack: NDArray[np.bool_] | None) -> BoolArray | None:
    """Per GPU, whether its rack is stale; None when no rack is (the usual case, free)."""
    if stale_rack is None:
        return None
    racks = np.asarray(stale_rack, dtype=np.bool_)
    if racks.shape != (plan.topology.n_racks,):
        raise PolicyError(f"stale_rack must have shape ({plan.topology.n_racks},)")
    if not racks.any():
        return None
    return racks[plan.gpu_rack]


def stale_caps(
    plan: CappingPlan,
    stale_gpu: BoolArray,
    *,
    previous_cap_w: FloatArray | None,
    tier: NDArray[np.int8],
    usable_w: tuple[FloatArray, ...],
    workspace: DecisionWorkspace,
) -> FloatArray:
    """What each stale GPU keeps this tick (others: their min cap). Units: W.

    A stale GPU may draw up to its cap in force: the last cap issued (clamped to its model's
    range), or its max cap when nothing was issued yet. The limits are filled with those caps
    first, every reporting GPU at its floor: where they fit, every stale GPU keeps its cap; where
    they do not, the cut goes by tier and water-filling like any other, so the sum fits at once.
    """
    topo = plan.topology
    min_cap, max_cap = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    in_force = max_cap if previous_cap_w is None else np.clip(previous_cap_w, min_cap, max_cap)
    wanted = np.where(stale_gpu, in_force, min_cap)
    # Usually every group holds them (a cut is only needed when a limit fell while they were
    # blind): one pass of group sums shows it, and spares the fill.
    fits = all(
        np.all(used <= usable + REL_TOL * np.maximum(np.abs(usable), 1.0))
        for used, usable in zip(plan.group_use(wanted), usable_w, strict=True)
    )
    if fits:
        return wanted
    return allocate(
        plan,
        floor_w=min_cap,
        demand_w=wanted,
        max_w=wanted,
        tier=tier,
        usable_w=usable_w,
        workspace=workspace,
    ).cap_w
