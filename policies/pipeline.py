"""One control tick as a row of stages: demand, site budget, stale racks, tier floors, the fill,
pacing, anti-chatter, clocks.

`decide` is the only entry point the daemon, the simulator and the benchmarks call. It is pure:
everything it needs from the past arrives in `state`, and what the next tick needs leaves in the
returned `DecisionState`, so any decision can be replayed from recorded inputs. Its working
memory is the caller's `DecisionWorkspace` (a fresh one when none is given).

Each stage is a function of the tick's inputs and the earlier stages' results, in its own module:
`policies.demand` (what each GPU wants), `policies.site` (the site power allowed this tick),
`policies.stale` (racks without telemetry at their worst case), `policies.floors` (each tier's
tolerated slowdown), `policies.capping` (the water-fill), `policies.pacing` (synchronous jobs at
their slowest member's pace), `policies.smoothing` (raise rate and deadband) and `policies.dvfs`
(clock ceilings).

Previous caps come from outside (a recorded state, a snapshot): they are clamped to each model's
[min cap, max cap] where they are read, so a stale or foreign figure cannot be kept or divide by
an idle GPU's zero dynamic power.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.capping import Allocation, allocate, check_tier
from policies.decision import Decision, DecisionState, Limits, PolicySettings
from policies.demand import estimate_demand, hold_demand
from policies.dvfs import clock_targets
from policies.errors import PolicyError
from policies.fleet import FleetState
from policies.floors import tier_floor_caps
from policies.lending import lend_step
from policies.pacing import pace_ceiling
from policies.plan import CappingPlan
from policies.site import allowed_site_power
from policies.smoothing import smooth
from policies.stale import stale_caps, stale_gpus
from policies.topology import Topology
from policies.workspace import DecisionWorkspace

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


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
) -> tuple[Decision, DecisionState]:
    """Caps and clock ceilings for every GPU, and the state the next tick starts from.

    `sync_job` (optional, one entry per GPU) numbers the synchronous jobs the scheduler reported,
    -1 for a GPU in none: see `policies.pacing.pace_ceiling` for what the allocation does with
    them. `workspace` is the caller's working memory for a fleet of this size, reused from tick
    to tick (see `policies.workspace`). The per-GPU arrays returned are read-only.
    """
    tick = _start(topology, fleet, tier, settings, state, now_s, stale_rack, workspace)
    demand = _demand(tick, fleet)
    activity = _activity(tick, fleet)
    site_allowed, usable_w = _site(tick, limits)
    bounds = _bounds(tick, demand, usable_w)
    alloc = _fill(tick, bounds, activity, usable_w, limits, sync_job)
    cap, budget = _smooth(tick, alloc, bounds.floor_w, usable_w)
    # The caps above fit every limit; lending moves them within the worst-case bounds of
    # `policies.lending` before they are issued.
    cap, budget, lend_basis = _lend(tick, fleet, cap, budget, bounds, usable_w)
    clock, saving = _clocks(tick, cap, activity)
    util_held = activity.held if activity.held is not activity.util else activity.util.copy()
    for array in (cap, clock, bounds.demand_w, util_held):
        array.setflags(write=False)
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
        plan=tick.plan,
        lend_basis_w=lend_basis,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Tick:
    """What every stage of one tick reads: the plan, the workspace, the checked inputs."""

    plan: CappingPlan
    workspace: DecisionWorkspace
    tiers: NDArray[np.int8]
    settings: PolicySettings
    #: The previous tick's state; None on a cold start (or when the fleet changed size).
    state: DecisionState | None
    now_s: float
    #: Seconds since the previous tick (0 cold).
    dt_s: float
    stale_gpu: BoolArray | None
    #: Warm, the rows of one block the per-GPU outputs go into: a fresh array of this size
    #: each is freed and refaulted every tick (the allocator hands its pages back to the
    #: kernel), which cost as much as a whole stage. Cold, each stage allocates its own.
    held_demand_out: FloatArray | None
    cap_out: FloatArray | None
    held_activity_out: FloatArray | None
    clock_out: FloatArray | None
    #: Where lending writes its caps (warm, with lending on).
    lend_out: FloatArray | None


def _start(  # noqa: PLR0917 - decide's inputs, checked once
    topology: Topology,
    fleet: FleetState,
    tier: NDArray[np.int8],
    settings: PolicySettings,
    state: DecisionState | None,
    now_s: float,
    stale_rack: NDArray[np.bool_] | None,
    workspace: DecisionWorkspace | None,
) -> _Tick:
    """Check the inputs, find (or build) the plan, and lay out the outputs' memory."""
    plan = state.plan if state is not None and state.plan is not None else None
    if plan is None or plan.topology is not topology:
        plan = CappingPlan.build(topology)
    n = topology.n_gpus
    ws = DecisionWorkspace(n) if workspace is None else workspace
    ws.serve(plan)
    tiers = check_tier(tier, n)
    if fleet.power_w.shape != (n,):
        raise PolicyError(f"fleet has {fleet.power_w.shape[0]} GPUs, topology {n}")
    if state is not None and state.cap_w.shape != (n,):
        state = None  # the topology changed under us: start cold rather than misalign caps
    rows = 5 if settings.capping.lend.enabled else 4
    fresh: list[FloatArray | None] = [None] * 5 if state is None else list(np.empty((rows, n)))
    if len(fresh) < 5:
        fresh.append(None)
    return _Tick(
        plan=plan,
        workspace=ws,
        tiers=tiers,
        settings=settings,
        state=state,
        now_s=now_s,
        dt_s=0.0 if state is None else max(now_s - state.now_s, 0.0),
        stale_gpu=stale_gpus(plan, stale_rack),
        held_demand_out=fresh[0],
        cap_out=fresh[1],
        held_activity_out=fresh[2],
        clock_out=fresh[3],
        lend_out=fresh[4],
    )


def _demand(tick: _Tick, fleet: FleetState) -> FloatArray:
    """The demand estimate, peak-held when warm."""
    plan, state, settings = tick.plan, tick.state, tick.settings
    topology = plan.topology
    held_demand = None if state is None else state.demand_w
    holding = (
        state is not None
        and settings.capping.demand_hold_s > 0.0
        and held_demand is not None
        and held_demand.shape == (topology.n_gpus,)
    )
    demand = estimate_demand(
        plan,
        fleet,
        topology.gpu_min_cap_w,
        topology.gpu_max_cap_w,
        settings.capping,
        ceiling_mhz=None if state is None else state.sm_clock_max_mhz,
        memory_bound_ratio=settings.dvfs.memory_bound_ratio,
        # Held, the demand is a fresh array made by the hold, so the estimate can use a buffer.
        out=tick.workspace.raw_demand if holding else None,
        workspace=tick.workspace,
    )
    if not holding:
        return demand
    return hold_demand(
        demand,
        held_demand,
        dt_s=tick.dt_s,
        hold_s=settings.capping.demand_hold_s,
        out=tick.held_demand_out,
    )


@dataclass(frozen=True, slots=True)
class _Activity:
    """SM and memory activity as the stages see it (a stale GPU's unknown: 0)."""

    util: FloatArray
    mem_util: FloatArray
    #: Peak-held SM activity (`DvfsSettings.activity_hold_s`).
    held: FloatArray
    #: The held activity, 0 on stale GPUs: what tier floors and clock fitting are sized for.
    fit: FloatArray


def _activity(tick: _Tick, fleet: FleetState) -> _Activity:
    """This tick's activity, peak-held when warm."""
    stale_gpu, state = tick.stale_gpu, tick.state
    util, mem_util = fleet.util, fleet.mem_util
    if stale_gpu is not None:  # unknown activity: leave their clocks at the max
        util, mem_util = np.where(stale_gpu, 0.0, util), np.where(stale_gpu, 0.0, mem_util)
    held = util
    if state is not None:
        held = hold_demand(
            util,
            state.util_held,
            dt_s=tick.dt_s,
            hold_s=tick.settings.dvfs.activity_hold_s,
            out=tick.held_activity_out,
        )
    fit = held if stale_gpu is None else np.where(stale_gpu, 0.0, held)
    return _Activity(util=util, mem_util=mem_util, held=held, fit=fit)


def _site(tick: _Tick, limits: Limits) -> tuple[float, tuple[FloatArray, ...]]:
    """The site power allowed this tick, and every level's usable limit under it. Units: W."""
    plan = tick.plan
    site_allowed = allowed_site_power(
        plan.topology,
        limits=limits,
        settings=tick.settings.capping,
        state=tick.state,
        now_s=tick.now_s,
    )
    usable = list(plan.usable_w)
    usable[-1] = np.minimum(usable[-1], site_allowed)
    if limits.gpu_floor_w is not None and np.shape(limits.gpu_floor_w) != (plan.topology.n_gpus,):
        raise PolicyError(f"limits.gpu_floor_w must have shape ({plan.topology.n_gpus},)")
    return site_allowed, tuple(usable)


@dataclass(frozen=True, slots=True)
class _Bounds:
    """Per GPU, where the fill starts, what it aims for and where it stops. Units: W."""

    floor_w: FloatArray
    demand_w: FloatArray
    max_w: FloatArray


def _bounds(tick: _Tick, demand: FloatArray, usable_w: tuple[FloatArray, ...]) -> _Bounds:
    """Min cap to demand to max cap, except that stale GPUs are fixed at what they keep."""
    plan, stale_gpu = tick.plan, tick.stale_gpu
    min_cap, max_cap = plan.topology.gpu_min_cap_w, plan.topology.gpu_max_cap_w
    if stale_gpu is None:
        return _Bounds(floor_w=min_cap, demand_w=demand, max_w=max_cap)
    kept = stale_caps(
        plan,
        stale_gpu,
        previous_cap_w=None if tick.state is None else tick.state.cap_w,
        tier=tick.tiers,
        usable_w=usable_w,
        workspace=tick.workspace,
    )
    # Fixed at what they keep: the fill moves only the GPUs that report.
    return _Bounds(
        floor_w=np.where(stale_gpu, kept, min_cap),
        demand_w=np.where(stale_gpu, kept, demand),
        max_w=np.where(stale_gpu, kept, max_cap),
    )


def _fill(  # noqa: PLR0917 - one stage of `decide`, called once
    tick: _Tick,
    bounds: _Bounds,
    activity: _Activity,
    usable_w: tuple[FloatArray, ...],
    limits: Limits,
    sync_job: NDArray[np.int32] | None,
) -> Allocation:
    """Tier floors, the water-fill, and the fill again if a synchronous job is held back.

    The tier floors raise `bounds.demand_w` in place (see `tier_floor_caps`).
    """
    plan, ws = tick.plan, tick.workspace
    tier_floor = tier_floor_caps(
        plan,
        demand_w=bounds.demand_w,
        activity=activity.fit,
        floor_w=bounds.floor_w,
        max_w=bounds.max_w,
        tier=tick.tiers,
        tolerances=tick.settings.capping.flex_tolerances,
        requested_w=limits.gpu_floor_w,
        workspace=ws,
    )
    # Warm, smoothing makes the fresh caps, so the fill's own can live in the workspace.
    out = None if tick.state is None else ws.target_cap
    alloc = allocate(
        plan,
        floor_w=bounds.floor_w,
        demand_w=bounds.demand_w,
        max_w=bounds.max_w,
        tier=tick.tiers,
        usable_w=usable_w,
        tier_floor_w=tier_floor,
        out=out,
        workspace=ws,
    )
    if sync_job is None:
        return alloc
    ceiling = pace_ceiling(plan, alloc.cap_w, sync_job, activity.held)
    if ceiling is None:
        return alloc
    if tick.stale_gpu is not None:
        ceiling[tick.stale_gpu] = np.inf  # a blind GPU's pace is unknown: it is not held
    paced = _paced(ceiling, bounds, tier_floor)
    return allocate(
        plan,
        floor_w=paced.floor_w,
        demand_w=paced.demand_w,
        max_w=paced.max_w,
        tier=tick.tiers,
        usable_w=usable_w,
        tier_floor_w=tier_floor,
        out=out,
        workspace=ws,
    )


def _paced(ceiling: FloatArray, bounds: _Bounds, tier_floor: FloatArray) -> _Bounds:
    """The fill's bounds with every held-back synchronous job's GPUs fixed at its pace.

    A held job's GPUs are fixed at its pace, which each had or exceeded, so the job loses
    nothing; what they give back goes to the tiers in order, and the surplus phase returns
    whatever nobody else wanted to every GPU. `ceiling` (inf outside a held job) and
    `tier_floor` are updated in place.
    """
    paced = np.isfinite(ceiling)
    np.maximum(ceiling, bounds.floor_w, out=ceiling)
    fixed = np.where(paced, ceiling, bounds.floor_w)
    paced_demand = np.where(paced, ceiling, bounds.demand_w)
    np.maximum(tier_floor, fixed, out=tier_floor)
    np.minimum(tier_floor, paced_demand, out=tier_floor)
    return _Bounds(floor_w=fixed, demand_w=paced_demand, max_w=bounds.max_w)


def _smooth(
    tick: _Tick, alloc: Allocation, floor_w: FloatArray, usable_w: tuple[FloatArray, ...]
) -> tuple[FloatArray, tuple[FloatArray, ...]]:
    """Warm, the caps after the raise rate and the deadband; and each group's budget."""
    state, plan = tick.state, tick.plan
    if state is None:
        return alloc.cap_w, alloc.used_w
    cap, smoothed_use = smooth(
        plan,
        target_w=alloc.cap_w,
        previous_w=state.cap_w,
        min_w=floor_w,
        max_w=plan.topology.gpu_max_cap_w,
        dt_s=tick.dt_s,
        settings=tick.settings.capping,
        usable_w=usable_w,
        target_used_w=alloc.used_w,
        out=tick.cap_out,
        workspace=tick.workspace,
    )
    return cap, plan.group_use(cap) if smoothed_use is None else smoothed_use


def _lend(  # noqa: PLR0917 - the smoothed tick's outputs
    tick: _Tick,
    fleet: FleetState,
    cap: FloatArray,
    budget: tuple[FloatArray, ...],
    bounds: _Bounds,
    usable_w: tuple[FloatArray, ...],
) -> tuple[FloatArray, tuple[FloatArray, ...], FloatArray | None]:
    """With lending on, the caps after undrawn headroom is lent, each group's budget and the
    lenders' basis for the next tick; else the caps and budget unchanged."""
    settings, state = tick.settings.capping, tick.state
    if not settings.lend.enabled:
        return cap, budget, None
    lent = lend_step(
        tick.plan,
        cap_w=cap,
        previous_w=cap if state is None else state.cap_w,
        power_w=fleet.power_w,
        demand_w=bounds.demand_w,
        max_w=bounds.max_w,
        tier=tick.tiers,
        usable_w=usable_w,
        basis_w=None if state is None else state.lend_basis_w,
        dt_s=tick.dt_s,
        raise_w=settings.raise_rate_w_per_s * tick.dt_s,
        settings=settings.lend,
        frozen=tick.stale_gpu,
        out=tick.lend_out,
        workspace=tick.workspace,
    )
    return lent.cap_w, budget if lent.used_w is None else lent.used_w, lent.basis_w


def _clocks(tick: _Tick, cap: FloatArray, activity: _Activity) -> tuple[FloatArray, float]:
    """Clock ceilings for the issued caps, and the power they save against them (W)."""
    return clock_targets(
        tick.plan,
        cap_w=cap,
        util=activity.util,
        mem_util=activity.mem_util,
        settings=tick.settings.dvfs,
        fit_util=activity.fit,
        tier=tick.tiers,
        tolerances=tick.settings.capping.flex_tolerances,
        out=tick.clock_out,
        workspace=tick.workspace,
    )
