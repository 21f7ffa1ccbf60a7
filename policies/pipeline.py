"""One control tick as a row of stages: demand, site budget, stale racks, tier floors, the fill,
pacing, anti-chatter, clocks.

`decide` is the only entry point the daemon, the simulator and the benchmarks call. It is pure:
everything it needs from the past arrives in `state`, and what the next tick needs leaves in the
returned `DecisionState`, so any decision can be replayed from recorded inputs. Its working
memory is the caller's `DecisionWorkspace` (a fresh one when none is given).

Each stage is a function of the tick's inputs and the earlier stages' results
(`policies.tick_stages`), whose algorithm lives in its own module: `policies.non_gpu` (servers'
non-GPU power as measured, when enabled), `policies.demand` (what each GPU wants),
`policies.site` (the site power allowed this tick), `policies.stale` (racks without
telemetry at their worst case), `policies.floors` (each tier's tolerated slowdown),
`policies.capping` (the water-fill), `policies.pacing` (synchronous jobs at their slowest
member's pace), `policies.smoothing` (raise rate and deadband) and `policies.dvfs` (clock
ceilings).

Previous caps come from outside (a recorded state, a snapshot): they are clamped to each model's
[min cap, max cap] where they are read, so a stale or foreign figure cannot be kept or divide by
an idle GPU's zero dynamic power.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies import tick_stages as stage
from policies.decision import Decision, DecisionState, Limits, PolicySettings
from policies.fleet import FleetState
from policies.topology import Topology
from policies.workspace import DecisionWorkspace


def decide(
    topology: Topology,
    fleet: FleetState,
    *,
    tier: NDArray[np.int8],
    limits: Limits,
    settings: PolicySettings,
    state: DecisionState | None,
    now_s: float,
    stale_rack: NDArray[np.bool_] | None = None,
    sync_job: NDArray[np.int32] | None = None,
    workspace: DecisionWorkspace | None = None,
    lender: NDArray[np.bool_] | None = None,
) -> tuple[Decision, DecisionState]:
    """Caps and clock ceilings for every GPU, and the state the next tick starts from.

    `sync_job` (optional, one entry per GPU) numbers the synchronous jobs the scheduler reported,
    -1 for a GPU in none: see `policies.pacing.pace_ceiling` for what the allocation does with
    them. `workspace` is the caller's working memory for a fleet of this size, reused from tick
    to tick (see `policies.workspace`). `lender` (None: every GPU) marks the GPUs whose
    undrawn headroom lending may lend (`policies.lending.lenders`). The per-GPU arrays returned
    are read-only.
    """
    tick = stage.start(topology, fleet, tier, settings, state, now_s, stale_rack, workspace)
    demand, raw_demand = stage.demand(tick, fleet)
    activity = stage.activity(tick, fleet)
    site_allowed, usable_w = stage.site(tick, limits)
    bounds = stage.bounds(tick, demand, usable_w)
    alloc, floor_basis = stage.fill(tick, raw_demand, bounds, activity, usable_w, limits, sync_job)
    cap, budget = stage.smooth(tick, alloc, bounds.floor_w, usable_w)
    # The caps above fit every limit; lending moves them within the worst-case bounds of
    # `policies.lending` before they are issued.
    cap, budget, lend_basis = stage.lend(tick, fleet, cap, budget, bounds, usable_w, lender)
    clock, saving = stage.clocks(tick, cap, activity)
    util_held = activity.held if activity.held is not activity.util else activity.util.copy()
    for array in (cap, clock, bounds.demand_w, util_held):
        array.setflags(write=False)
    floor_basis.setflags(write=False)
    decision = Decision(
        cap_w=cap,
        sm_clock_max_mhz=clock,
        demand_w=bounds.demand_w,
        tier=tick.tiers,
        budget_w=budget,
        limit_w=usable_w,
        infeasible=alloc.infeasible,
        site_allowed_w=site_allowed,
        dvfs_saving_w=saving,
        activity_held=util_held,
    )
    return decision, DecisionState(
        cap_w=cap,
        now_s=now_s,
        site_allowed_w=site_allowed,
        demand_w=bounds.demand_w,
        sm_clock_max_mhz=clock,
        util_held=util_held,
        plan=tick.peak_plan,
        lend_basis_w=lend_basis,
        floor_basis_w=floor_basis,
        non_gpu_w=tick.non_gpu_w,
    )
