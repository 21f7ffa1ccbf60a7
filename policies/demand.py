"""The demand estimate: what each GPU would draw uncapped, and its peak hold.

A capped GPU's draw says nothing of what it wants: it draws its cap. The estimate treats a GPU
held back by its cap (or by the clock ceiling issued last tick) as wanting more, with headroom,
and the hold keeps a synchronous job's communication dips from reading as lost demand.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.decision import CappingSettings
from policies.fleet import FleetState
from policies.plan import CappingPlan
from policies.workspace import DecisionWorkspace

FloatArray = NDArray[np.float64]


def estimate_demand(
    plan: CappingPlan,
    fleet: FleetState,
    min_cap_w: FloatArray,
    max_cap_w: FloatArray,
    settings: CappingSettings,
    *,
    ceiling_mhz: FloatArray | None = None,
    memory_bound_ratio: float = 0.6,
    out: FloatArray | None = None,
    workspace: DecisionWorkspace | None = None,
    tier_keep: FloatArray | None = None,
) -> FloatArray:
    """What each GPU would draw uncapped, from recent power, with headroom. Units: W.

    A compute-bound GPU running at the clock ceiling issued last tick (`ceiling_mhz`) is held back
    by that ceiling just as by a cap, so it counts as pinned too; otherwise a conservative ceiling
    would shrink its cap tick after tick and hand its power to lower tiers. A memory-bound GPU at
    its ceiling is not: that ceiling costs it at most the DVFS loss budget, by design.

    A GPU drawing within `pinned_frac` of its cap is held back by it, so its real demand is
    unknown and at least the cap: it asks for the cap plus headroom (`demand_headroom_*`), and
    keeps asking more each tick while it stays pinned and power is free. A busy GPU drawing below
    its cap is not held back: its demand is its draw, and it asks only for the smaller
    `unpinned_headroom_*` over it, enough for a rise to pin it (and be seen) on the next tick.
    Except on a tier that tolerates no slowdown (`tier_keep`, the tier floors' share of dynamic
    power per GPU, is 1 there; None: no such tier): a Flex 0 service whose load rises would run
    capped, below its floor, for the telemetry delay and the actuation lag before it showed
    pinned, so it keeps the pinned headroom. Its floor is still its draw (`tier_floor_caps`).
    Under a binding limit the headroom of GPUs that do not draw it is power the tiers below
    cannot use; the tier floors already size a busy GPU's cap from its held activity. A GPU idle
    by utilisation asks only for what it draws. Every result is within [min cap, max cap], so
    idle GPUs still get the min cap.

    The result goes into `out` when given (the warm path passes the workspace's `raw_demand`,
    since the demand hold makes the fresh array), else into a fresh array. Temporaries live in
    `workspace` (a fresh one when None).
    """
    buffers = (DecisionWorkspace(plan.topology.n_gpus) if workspace is None else workspace).demand
    power, cap = fleet.power_w, fleet.cap_w
    threshold = np.multiply(cap, settings.pinned_frac, out=buffers.threshold)
    pinned = np.greater_equal(power, threshold, out=buffers.pinned)
    if ceiling_mhz is not None and ceiling_mhz.shape == power.shape:
        reach = np.add(fleet.sm_clock_mhz, plan.clock_step_mhz, out=buffers.reach)
        at_ceiling = np.greater_equal(reach, ceiling_mhz, out=buffers.at_ceiling)
        below_max = np.less(ceiling_mhz, plan.max_clock_mhz, out=buffers.below_max)
        np.logical_and(at_ceiling, below_max, out=at_ceiling)
        # Compute-bound and busy: SM activity at least `memory_bound_ratio` of memory activity.
        bound = np.multiply(fleet.mem_util, memory_bound_ratio, out=buffers.bound)
        compute = np.greater_equal(fleet.util, bound, out=below_max)
        np.logical_and(at_ceiling, compute, out=at_ceiling)
        busy = np.greater(fleet.util, 0.0, out=compute)
        np.logical_and(at_ceiling, busy, out=at_ceiling)
        np.logical_or(pinned, at_ceiling, out=pinned)
    base = np.multiply(cap, pinned, out=buffers.base)  # the cap where pinned ...
    np.maximum(base, power, out=base)  # ... so this is max(power, cap) if pinned, else power
    # Headroom per GPU: the pinned one's where pinned, the unpinned one's elsewhere (a linear
    # blend by the 0/1 mask, cheaper than np.where on a mask this irregular).
    full = pinned
    if tier_keep is not None and tier_keep.shape == power.shape:
        # `below_max` is dead once the ceiling test is done; `at_ceiling` until `asks`.
        strict = np.greater_equal(tier_keep, 1.0, out=buffers.below_max)
        full = np.logical_or(pinned, strict, out=buffers.at_ceiling)
    frac = np.multiply(
        full, settings.demand_headroom_frac - settings.unpinned_headroom_frac, out=buffers.frac
    )
    frac += 1.0 + settings.unpinned_headroom_frac
    demand = np.multiply(base, frac, out=buffers.headroom)
    floor = np.multiply(
        full, settings.demand_headroom_min_w - settings.unpinned_headroom_min_w, out=threshold
    )
    floor += settings.unpinned_headroom_min_w
    floor += base
    np.maximum(demand, floor, out=demand)
    # Idle GPUs ask only for `base`. Headroom makes demand >= base elsewhere, so zeroing the
    # idle entries and taking the maximum with `base` selects exactly (np.where with a mask
    # this irregular costs several times the arithmetic). A negative `base` becomes 0 here,
    # which the min cap (> 0) overrides just the same.
    busy = np.less_equal(fleet.util, 0.0, out=buffers.asks)
    np.logical_not(busy, out=busy)
    np.logical_or(busy, pinned, out=busy)
    out = np.multiply(demand, busy, out=out)
    np.maximum(out, base, out=out)
    np.maximum(out, min_cap_w, out=out)
    np.minimum(out, max_cap_w, out=out)
    return out


def hold_demand(
    demand_w: FloatArray,
    previous_w: FloatArray | None,
    *,
    dt_s: float,
    hold_s: float,
    out: FloatArray | None = None,
) -> FloatArray:
    """Peak-hold the demand estimate: rises count at once, falls decay with `hold_s`. Units: W.

    Without the hold, a training job's communication phase looks like lost demand; its power
    goes to lower tiers and comes back only at the raise rate when compute resumes, so the job
    with the higher priority ends up slowed more than the ones below it.
    """
    if previous_w is None or previous_w.shape != demand_w.shape or hold_s <= 0.0:
        return demand_w
    keep = float(np.exp(-dt_s / hold_s))
    held = np.subtract(previous_w, demand_w, out=out)
    # previous > demand exactly where the decayed term is positive: clip it, no extra maximum.
    np.maximum(held, 0.0, out=held)
    held *= keep
    held += demand_w
    return held
