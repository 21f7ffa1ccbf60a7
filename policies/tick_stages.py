"""The stages of one decision tick, as `policies.pipeline.decide` runs them in order.

Each stage reads the tick's checked inputs (`CoreTick`, made once by `start`) and the earlier
stages' results, and calls into the module that holds its algorithm: `policies.demand`,
`policies.site`, `policies.stale`, `policies.floors`, `policies.capping`, `policies.pacing`,
`policies.smoothing`, `policies.lending` and `policies.dvfs`. They live apart from `decide` so
that the entry point reads as the row of stages it is; nothing but `decide` calls them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies import smoothing
from policies.capping import Allocation, allocate, check_tier
from policies.decision import DecisionState, Limits, PolicySettings
from policies.demand import estimate_demand, hold_demand
from policies.dvfs import clock_targets
from policies.errors import PolicyError
from policies.fleet import FleetState
from policies.floors import FloorHold, tier_floor_caps, tier_keep_per_gpu
from policies.lending import lend_step
from policies.non_gpu import measured_overhead
from policies.pacing import pace_ceiling
from policies.plan import CappingPlan
from policies.site import allowed_site_power
from policies.stale import stale_caps, stale_gpus
from policies.topology import Topology
from policies.workspace import DecisionWorkspace

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreTick:
    """What every stage of one tick reads: the plan, the workspace, the checked inputs."""

    #: The plan the allocation fills against: with measured non-GPU power on, its overheads
    #: are this tick's measured ones (`policies.non_gpu`), else `peak_plan` itself.
    plan: CappingPlan
    #: The plan with every overhead at its peak, built from the topology and carried warm.
    peak_plan: CappingPlan
    #: Per rack, the held non-GPU measurement for the next tick (None while that is off).
    non_gpu_w: FloatArray | None
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
    #: Where the held floor basis goes (warm).
    floor_basis_out: FloatArray | None


def start(  # noqa: PLR0917 - decide's inputs, checked once
    topology: Topology,
    fleet: FleetState,
    tier: NDArray[np.int8],
    settings: PolicySettings,
    state: DecisionState | None,
    now_s: float,
    stale_rack: NDArray[np.bool_] | None,
    workspace: DecisionWorkspace | None,
) -> CoreTick:
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
    stale_gpu = stale_gpus(plan, stale_rack)
    peak_plan, non_gpu_w = plan, None
    non_gpu = settings.capping.non_gpu
    if non_gpu.measured:
        budget = measured_overhead(
            plan,
            fleet,
            settings=non_gpu,
            previous_w=None if state is None else state.non_gpu_w,
            dt_s=0.0 if state is None else max(now_s - state.now_s, 0.0),
            # Checked by `stale_gpus`; None when no rack is stale.
            stale_rack=None if stale_gpu is None else np.asarray(stale_rack, dtype=np.bool_),
        )
        plan, non_gpu_w = plan.with_overhead(budget.overhead_w), budget.held_w
    lend = settings.capping.lend.enabled
    # Rows: held demand, caps, held activity, clocks, floor basis, and lent caps with lending.
    fresh: list[FloatArray | None] = [None] * 6
    if state is not None:
        fresh[: 5 + lend] = list(np.empty((5 + lend, n)))
    return CoreTick(
        plan=plan,
        peak_plan=peak_plan,
        non_gpu_w=non_gpu_w,
        workspace=ws,
        tiers=tiers,
        settings=settings,
        state=state,
        now_s=now_s,
        dt_s=0.0 if state is None else max(now_s - state.now_s, 0.0),
        stale_gpu=stale_gpu,
        held_demand_out=fresh[0],
        cap_out=fresh[1],
        held_activity_out=fresh[2],
        clock_out=fresh[3],
        floor_basis_out=fresh[4],
        lend_out=fresh[5],
    )


def demand(tick: CoreTick, fleet: FleetState) -> tuple[FloatArray, FloatArray]:
    """The demand estimate, peak-held when warm; and the estimate before the hold (the same
    array when nothing was held), which the tier floors hold in their own way."""
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
        tier_keep=_strict_keep(tick),
    )
    if not holding:
        return demand, demand
    held = hold_demand(
        demand,
        held_demand,
        dt_s=tick.dt_s,
        hold_s=settings.capping.demand_hold_s,
        out=tick.held_demand_out,
    )
    return held, demand


@dataclass(frozen=True, slots=True)
class Activity:
    """SM and memory activity as the stages see it (a stale GPU's unknown: 0)."""

    util: FloatArray
    mem_util: FloatArray
    #: Peak-held SM activity (`DvfsSettings.activity_hold_s`).
    held: FloatArray
    #: The held activity, 0 on stale GPUs: what tier floors and clock fitting are sized for.
    fit: FloatArray
    #: The reported draw and SM clock, from which the floors read a held-back GPU's uncapped
    #: draw (`tier_floor_caps`). Units: W, MHz.
    power_w: FloatArray | None = None
    sm_clock_mhz: FloatArray | None = None


def activity(tick: CoreTick, fleet: FleetState) -> Activity:
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
    return Activity(
        util=util,
        mem_util=mem_util,
        held=held,
        fit=fit,
        power_w=fleet.power_w,
        sm_clock_mhz=fleet.sm_clock_mhz,
    )


def site(tick: CoreTick, limits: Limits) -> tuple[float, tuple[FloatArray, ...]]:
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
class Bounds:
    """Per GPU, where the fill starts, what it aims for and where it stops. Units: W."""

    floor_w: FloatArray
    demand_w: FloatArray
    max_w: FloatArray


def bounds(tick: CoreTick, demand: FloatArray, usable_w: tuple[FloatArray, ...]) -> Bounds:
    """Min cap to demand to max cap, except that stale GPUs are fixed at what they keep."""
    plan, stale_gpu = tick.plan, tick.stale_gpu
    min_cap, max_cap = plan.topology.gpu_min_cap_w, plan.topology.gpu_max_cap_w
    if stale_gpu is None:
        return Bounds(floor_w=min_cap, demand_w=demand, max_w=max_cap)
    kept = stale_caps(
        plan,
        stale_gpu,
        previous_cap_w=None if tick.state is None else tick.state.cap_w,
        tier=tick.tiers,
        usable_w=usable_w,
        workspace=tick.workspace,
    )
    # Fixed at what they keep: the fill moves only the GPUs that report.
    return Bounds(
        floor_w=np.where(stale_gpu, kept, min_cap),
        demand_w=np.where(stale_gpu, kept, demand),
        max_w=np.where(stale_gpu, kept, max_cap),
    )


def fill(  # noqa: PLR0917 - one stage of `decide`, called once
    tick: CoreTick,
    raw_demand: FloatArray,
    bounds: Bounds,
    activity: Activity,
    usable_w: tuple[FloatArray, ...],
    limits: Limits,
    sync_job: NDArray[np.int32] | None,
) -> tuple[Allocation, FloatArray]:
    """Tier floors, the water-fill, and the fill again if a synchronous job is held back; and
    the draw the floors were sized for, held for the next tick.

    The tier floors raise `bounds.demand_w` in place (see `tier_floor_caps`).
    """
    plan, ws = tick.plan, tick.workspace
    capping = tick.settings.capping
    held = _floor_hold(tick, sync_job)
    tier_floor = tier_floor_caps(
        plan,
        demand_w=bounds.demand_w,
        activity=activity.fit,
        floor_w=bounds.floor_w,
        max_w=bounds.max_w,
        tier=tick.tiers,
        tolerances=tick.settings.capping.flex_tolerances,
        requested_w=limits.gpu_floor_w,
        held=held,
        headroom=(capping.unpinned_headroom_frac, capping.unpinned_headroom_min_w),
        # Held back by a cap or a clock ceiling: the demand stage's verdict, still in its buffer.
        held_back=ws.demand.pinned,
        raw_w=raw_demand,
        workspace=ws,
        power_w=activity.power_w,
        sm_clock_mhz=activity.sm_clock_mhz,
    )
    basis = held.out
    if capping.lend.enabled:
        np.copyto(ws.lend().tier_floor, tier_floor)  # before pacing lowers members' to the pace
    alloc = _allocate(tick, bounds, usable_w, tier_floor)
    if sync_job is None:
        return alloc, basis
    ceiling = pace_ceiling(plan, alloc.cap_w, sync_job, activity.held)
    if ceiling is None:
        return alloc, basis
    if tick.stale_gpu is not None:
        ceiling[tick.stale_gpu] = np.inf  # a blind GPU's pace is unknown: it is not held
    return _allocate(tick, _paced(ceiling, bounds, tier_floor), usable_w, tier_floor), basis


def _allocate(
    tick: CoreTick, bounds: Bounds, usable_w: tuple[FloatArray, ...], tier_floor: FloatArray
) -> Allocation:
    """The water-fill within `bounds` over the tier floors. Warm, smoothing makes the fresh
    caps, so the fill's own can live in the workspace."""
    ws = tick.workspace
    return allocate(
        tick.plan,
        floor_w=bounds.floor_w,
        demand_w=bounds.demand_w,
        max_w=bounds.max_w,
        tier=tick.tiers,
        usable_w=usable_w,
        tier_floor_w=tier_floor,
        out=None if tick.state is None else ws.target_cap,
        workspace=ws,
    )


def _strict_keep(tick: CoreTick) -> FloatArray | None:
    """The tier floors' per-GPU keep when a tier tolerates no slowdown (it is 1 there), else
    None: the demand stage gives those GPUs the pinned headroom."""
    tolerances = tuple(tick.settings.capping.flex_tolerances)
    if 0.0 not in tolerances:
        return None
    return tier_keep_per_gpu(tick.plan, tick.workspace, tick.tiers, tolerances)


def _floor_hold(tick: CoreTick, sync_job: NDArray[np.int32] | None) -> FloorHold:
    """The hold of the draw the tier floors are sized for (`policies.floors.FloorHold`): the
    demand's time constant on the demand estimate's part, and `CappingSettings.floor_hold_s` on
    the whole of a synchronous job's U."""
    capping, n = tick.settings.capping, tick.tiers.size
    keep: FloatArray | float = _keep(tick.dt_s, capping.demand_hold_s)
    member = None
    if sync_job is not None and capping.floor_hold_s > 0.0:
        if sync_job.shape != (n,):
            raise PolicyError(f"sync_job must have shape ({n},)")
        member = np.greater_equal(sync_job, 0)
        # One time constant for all (every GPU in a job, or none) needs no per-GPU array.
        if member.all():
            keep = _keep(tick.dt_s, capping.floor_hold_s)
        elif member.any():
            keep = np.where(member, _keep(tick.dt_s, capping.floor_hold_s), keep)
    state = tick.state
    return FloorHold(
        previous_w=None if state is None else state.floor_basis_w,
        keep=keep,
        out=np.empty(n) if tick.floor_basis_out is None else tick.floor_basis_out,
        # Only a synchronous job's held U includes its modelled draw (see `FloorHold`).
        with_draw=member,
    )


def _keep(dt_s: float, hold_s: float) -> float:
    """Share of a held excess left after `dt_s` under time constant `hold_s` (0: none held)."""
    return float(np.exp(-dt_s / hold_s)) if hold_s > 0.0 else 0.0


def _paced(ceiling: FloatArray, bounds: Bounds, tier_floor: FloatArray) -> Bounds:
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
    return Bounds(floor_w=fixed, demand_w=paced_demand, max_w=bounds.max_w)


def smooth(
    tick: CoreTick, alloc: Allocation, floor_w: FloatArray, usable_w: tuple[FloatArray, ...]
) -> tuple[FloatArray, tuple[FloatArray, ...]]:
    """Warm, the caps after the raise rate and the deadband; and each group's budget."""
    state, plan = tick.state, tick.plan
    if state is None:
        return alloc.cap_w, alloc.used_w
    cap, smoothed_use = smoothing.smooth(
        plan,
        target_w=alloc.cap_w,
        previous_w=state.cap_w,
        min_w=floor_w,
        max_w=plan.topology.gpu_max_cap_w,
        dt_s=tick.dt_s,
        settings=tick.settings.capping,
        usable_w=usable_w,
        target_used_w=alloc.used_w,
        tier_floor_w=tick.workspace.tier_floor,
        out=tick.cap_out,
        workspace=tick.workspace,
    )
    return cap, plan.group_use(cap) if smoothed_use is None else smoothed_use


def lend(  # noqa: PLR0917 - the smoothed tick's outputs
    tick: CoreTick,
    fleet: FleetState,
    cap: FloatArray,
    budget: tuple[FloatArray, ...],
    bounds: Bounds,
    usable_w: tuple[FloatArray, ...],
    lender: NDArray[np.bool_] | None = None,
) -> tuple[FloatArray, tuple[FloatArray, ...], FloatArray | None]:
    """With lending on, the caps after undrawn headroom (of `lender` GPUs; None: all) is lent,
    each group's budget and the lenders' basis for the next tick; else the caps and budget
    unchanged."""
    settings, state = tick.settings.capping, tick.state
    if not settings.lend.enabled:
        return cap, budget, None
    if lender is not None and lender.shape != tick.tiers.shape:
        raise PolicyError(f"lender must have shape ({tick.tiers.size},)")
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
        non_gpu_rise_w=_non_gpu_rise(tick),
        tier_floor_w=tick.workspace.lend().tier_floor,
        lender=lender,
    )
    return lent.cap_w, budget if lent.used_w is None else lent.used_w, lent.basis_w


def _non_gpu_rise(tick: CoreTick) -> tuple[FloatArray, ...] | None:
    """Per level, the non-GPU power budgeted below its peak (None while it is budgeted at it)."""
    if tick.plan is tick.peak_plan:
        return None
    return tuple(
        np.subtract(peak, measured)
        for peak, measured in zip(tick.peak_plan.overhead_w, tick.plan.overhead_w, strict=True)
    )


def clocks(tick: CoreTick, cap: FloatArray, activity: Activity) -> tuple[FloatArray, float]:
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
