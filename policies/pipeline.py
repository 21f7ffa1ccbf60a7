"""One control tick: demand, site budget, caps, anti-chatter, clocks.

`decide` is the only entry point the daemon, the simulator and the benchmarks call. It is pure:
everything it needs from the past arrives in `state`, and what the next tick needs leaves in the
returned `DecisionState`, so any decision can be replayed from recorded inputs.

Racks without telemetry (stale) are counted at their worst case: each GPU at the cap in force
(the last one issued, or the max cap on a cold start, when nothing is known). That power stays
reserved for them while the limits allow it, so a command they may not hear frees nothing that
another GPU could take; where the limits no longer allow it (a contract or demand-response step
while every rack is blind) they are cut at once, like any other GPU, since commands still go to
them. Their caps are never raised.

Previous caps come from outside (a recorded state, a snapshot): they are clamped to each model's
[min cap, max cap] where they are read, so a stale or foreign figure cannot be kept or divide by
an idle GPU's zero dynamic power.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.capping import REL_TOL, allocate, check_tier
from policies.decision import (
    CappingSettings,
    Decision,
    DecisionState,
    Limits,
    PolicySettings,
)
from policies.dr_flex import check_tolerances
from policies.dvfs import BETA_POWER, MIN_ACTIVITY, clock_targets, dynamic_range
from policies.errors import PolicyError
from policies.fleet import FleetState
from policies.lending import lend_step
from policies.plan import CappingPlan
from policies.topology import Topology

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Clock fraction below which core voltage stops falling, so power falls only linearly with the
#: clock: 0.85, fitted to the Zeus power-limit sweeps of the A40 (0.90) and V100 (0.80) (NSDI
#: 2023; simulator/data/CALIBRATION.md). Used for the tier floors, where cuts reach below it.
FLOOR_KNEE = 0.85
#: Throughput exponent of compute-bound work in the clock, fitted to the same sweeps (1.1).
FLOOR_ALPHA = 1.1
#: A synchronous job whose slowest member's pace is within this of full speed is not held back.
PACE_TOL = 1e-3


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
) -> tuple[Decision, DecisionState]:
    """Caps and clock ceilings for every GPU, and the state the next tick starts from.

    `sync_job` (optional, one entry per GPU) numbers the synchronous jobs the scheduler reported,
    -1 for a GPU in none: see `pace_ceiling` for what the allocation does with them.
    """
    plan = state.plan if state is not None and state.plan is not None else None
    if plan is None or plan.topology is not topology:
        plan = CappingPlan.build(topology)
    n = topology.n_gpus
    tiers = check_tier(tier, n)
    if fleet.power_w.shape != (n,):
        raise PolicyError(f"fleet has {fleet.power_w.shape[0]} GPUs, topology {n}")
    if state is not None and state.cap_w.shape != (n,):
        state = None  # the topology changed under us: start cold rather than misalign caps
    stale_gpu = _stale_gpus(plan, stale_rack)
    min_cap, max_cap = topology.gpu_min_cap_w, topology.gpu_max_cap_w
    # A warm tick's per-GPU outputs (held demand, caps, held activity, clocks) share one fresh
    # block: four separate arrays of this size are freed and refaulted every tick (the
    # allocator hands their pages back to the kernel), which cost as much as a whole stage.
    lending = settings.capping.lend.enabled
    fresh: list[FloatArray | None] = (
        [None] * 5 if state is None else list(np.empty((5 if lending else 4, n)))
    )
    held_demand = None if state is None else state.demand_w
    holding = (
        state is not None
        and settings.capping.demand_hold_s > 0.0
        and held_demand is not None
        and held_demand.shape == (n,)
    )
    demand = estimate_demand(
        plan,
        fleet,
        min_cap,
        max_cap,
        settings.capping,
        ceiling_mhz=None if state is None else state.sm_clock_max_mhz,
        memory_bound_ratio=settings.dvfs.memory_bound_ratio,
        # Held, the demand is a fresh array made by the hold, so the estimate can use a buffer.
        out=plan.scratch.f("w4") if holding else None,
    )
    if holding and state is not None:
        demand = hold_demand(
            demand,
            held_demand,
            dt_s=max(now_s - state.now_s, 0.0),
            hold_s=settings.capping.demand_hold_s,
            out=fresh[0],
        )
    floor, ceiling_w = min_cap, max_cap

    util, mem_util = fleet.util, fleet.mem_util
    if stale_gpu is not None:  # unknown activity: leave their clocks at the max
        util, mem_util = np.where(stale_gpu, 0.0, util), np.where(stale_gpu, 0.0, mem_util)
    util_held = util
    if state is not None:
        util_held = hold_demand(
            util,
            state.util_held,
            dt_s=max(now_s - state.now_s, 0.0),
            hold_s=settings.dvfs.activity_hold_s,
            out=fresh[2],
        )

    site_allowed = allowed_site_power(
        topology,
        limits=limits,
        settings=settings.capping,
        state=state,
        now_s=now_s,
    )
    usable = list(plan.usable_w)
    usable[-1] = np.minimum(usable[-1], site_allowed)
    usable_w = tuple(usable)
    if stale_gpu is not None:
        kept = _stale_caps(plan, stale_gpu, state, tiers, usable_w)
        # Fixed at what they keep: the fill below moves only the GPUs that report.
        floor = np.where(stale_gpu, kept, min_cap)
        demand = np.where(stale_gpu, kept, demand)
        ceiling_w = np.where(stale_gpu, kept, max_cap)
    if limits.gpu_floor_w is not None and np.shape(limits.gpu_floor_w) != (n,):
        raise PolicyError(f"limits.gpu_floor_w must have shape ({n},)")
    tier_floor = tier_floor_caps(
        plan,
        demand_w=demand,
        activity=util_held if stale_gpu is None else np.where(stale_gpu, 0.0, util_held),
        floor_w=floor,
        max_w=ceiling_w,
        tier=tiers,
        tolerances=settings.capping.flex_tolerances,
        requested_w=limits.gpu_floor_w,
    )
    alloc = allocate(
        plan,
        floor_w=floor,
        demand_w=demand,
        max_w=ceiling_w,
        tier=tiers,
        usable_w=usable_w,
        tier_floor_w=tier_floor,
        # Warm, smoothing makes the fresh output, so the raw target can live in a buffer.
        out=None if state is None else plan.scratch.f("w3"),
    )
    if sync_job is not None:
        ceiling = pace_ceiling(plan, alloc.cap_w, sync_job, util_held)
        if ceiling is not None and stale_gpu is not None:
            ceiling[stale_gpu] = np.inf  # a blind GPU's pace is unknown: it is not held
        if ceiling is not None:
            # A held job's GPUs are fixed at its pace, which each had or exceeded, so the job
            # loses nothing; what they give back goes to the tiers in order, and the surplus
            # phase returns whatever nobody else wanted to every GPU.
            paced = np.isfinite(ceiling)
            np.maximum(ceiling, floor, out=ceiling)
            fixed = np.where(paced, ceiling, floor)
            paced_demand = np.where(paced, ceiling, demand)
            np.maximum(tier_floor, fixed, out=tier_floor)
            np.minimum(tier_floor, paced_demand, out=tier_floor)
            alloc = allocate(
                plan,
                floor_w=fixed,
                demand_w=paced_demand,
                max_w=ceiling_w,
                tier=tiers,
                usable_w=usable_w,
                tier_floor_w=tier_floor,
                out=None if state is None else plan.scratch.f("w3"),
            )
    cap = alloc.cap_w
    if state is not None:
        cap, smoothed_use = _smooth(
            plan,
            target_w=cap,
            previous_w=state.cap_w,
            min_w=floor,
            max_w=max_cap,
            dt_s=max(now_s - state.now_s, 0.0),
            settings=settings.capping,
            usable_w=usable_w,
            target_used_w=alloc.used_w,
            out=fresh[1],
        )
    if state is None:
        budget = alloc.used_w
    else:
        budget = _group_use(plan, cap) if smoothed_use is None else smoothed_use
    # ---- headroom lending (policies.lending): on the smoothed caps, before they are issued ----
    lend_basis = None
    if lending:
        lent = lend_step(
            plan,
            cap_w=cap,
            previous_w=cap if state is None else state.cap_w,
            power_w=fleet.power_w,
            demand_w=demand,
            max_w=ceiling_w,
            tier=tiers,
            usable_w=usable_w,
            basis_w=None if state is None else state.lend_basis_w,
            dt_s=0.0 if state is None else max(now_s - state.now_s, 0.0),
            raise_w=settings.capping.raise_rate_w_per_s
            * (0.0 if state is None else max(now_s - state.now_s, 0.0)),
            settings=settings.capping.lend,
            frozen=stale_gpu,
            out=fresh[4],
        )
        cap, lend_basis = lent.cap_w, lent.basis_w
        if lent.used_w is not None:
            budget = lent.used_w
    # ---- end of headroom lending ----
    issued = cap
    clock, saving = clock_targets(
        plan,
        cap_w=issued,
        util=util,
        mem_util=mem_util,
        settings=settings.dvfs,
        fit_util=util_held if stale_gpu is None else np.where(stale_gpu, 0.0, util_held),
        out=fresh[3],
    )
    decision = Decision(
        cap_w=issued,
        sm_clock_max_mhz=clock,
        demand_w=demand,
        tier=tiers,
        budget_w=budget,
        limit_w=usable_w,
        infeasible=alloc.infeasible,
        site_allowed_w=site_allowed,
        dvfs_saving_w=saving,
    )
    return decision, DecisionState(
        cap_w=issued,
        now_s=now_s,
        site_allowed_w=site_allowed,
        demand_w=demand,
        sm_clock_max_mhz=clock,
        util_held=util_held if util_held is not util else util.copy(),
        plan=plan,
        lend_basis_w=lend_basis,
    )


def tier_floor_caps(
    plan: CappingPlan,
    *,
    demand_w: FloatArray,
    activity: FloatArray,
    floor_w: FloatArray,
    max_w: FloatArray,
    tier: NDArray[np.int8],
    tolerances: tuple[float, ...],
    requested_w: FloatArray | None = None,
) -> FloatArray:
    """Per GPU, the cap that keeps it within its Flex tier's tolerated slowdown. Units: W.

    A GPU's uncapped draw U is the larger of its demand estimate and idle + (max cap - idle) a
    at SM activity a (the policy's model, `policies.dvfs`): a GPU held at a low cap draws its
    cap, so its demand estimate says nothing of what it would draw uncapped, and a floor from it
    would collapse with the cap. `demand_w` is raised to U in place. At clock fraction x it draws
    idle + (U - idle) g(x), g(x) = x max(knee, x)^2: the cube law above the voltage knee, linear
    below it, where the voltage stops falling (`FLOOR_KNEE`); its speed is x^alpha
    (`FLOOR_ALPHA`). Speed (1 - t) of the uncapped speed is then the cap
    idle + (U - idle) g((1 - t)^(1 / alpha)); Flex 0 (t = 0) gets U. The pure cube law would put
    a 25 % slowdown at 42 % of the dynamic power where the calibrated curve needs 56 %: floors
    from it are not floors. Memory-bound work (speed x^0.15) loses less at that cap, so for it
    the floor errs on the safe side; telling the two apart would cost a quarter of the tick's
    arithmetic for floors that matter only under cuts.

    `activity` is the peak-held SM activity (a communication dip is no lower floor);
    `requested_w` (the demand-response floors of `Limits.gpu_floor_w`) raises the floor where
    higher. Results stay within [floor, max] (a stale GPU, floor = max = its kept cap, keeps
    it). The floors live in a scratch buffer only `decide` writes.
    """
    keep, rest = _tier_keep(plan, tier, tuple(tolerances))
    scratch = plan.scratch
    draw = np.multiply(activity, dynamic_range(plan), out=scratch.f("w0"))
    np.add(draw, plan.idle_w, out=draw)
    np.maximum(demand_w, draw, out=demand_w)
    np.minimum(demand_w, max_w, out=demand_w)
    out = np.multiply(demand_w, keep, out=scratch.f("tier_floor"))
    np.add(out, rest, out=out)  # idle (1 - k) + U k = idle + (U - idle) k <= U, as k <= 1
    if requested_w is not None:
        np.maximum(out, requested_w, out=out)
        np.minimum(out, demand_w, out=out)
    np.maximum(out, floor_w, out=out)
    return out


def _tier_keep(
    plan: CappingPlan, tier: NDArray[np.int8], tolerances: tuple[float, ...]
) -> tuple[FloatArray, FloatArray]:
    """Per GPU, k = g((1 - tolerance)^(1 / alpha)) of its tier, and idle x (1 - k) (W).

    Tiers change far less often than telemetry: both arrays are kept in the plan's scratch,
    named by the tolerances, with a copy of the tiers they were made for.
    """
    scratch = plan.scratch
    name = f"tier_keep_{tolerances!r}"
    seen = scratch.has(name)
    last = scratch.i8(f"{name}_tier")
    keep, rest = scratch.f(name), scratch.f(f"{name}_rest")
    if not (seen and np.array_equal(tier, last)):
        clock = (1.0 - check_tolerances(tolerances)) ** (1.0 / FLOOR_ALPHA)
        table = clock * np.maximum(clock, FLOOR_KNEE) ** (BETA_POWER - 1.0)
        np.take(table, tier.astype(np.intp), out=keep)
        np.subtract(1.0, keep, out=rest)
        np.multiply(rest, plan.idle_w, out=rest)
        np.copyto(last, tier)
    return keep, rest


def pace_ceiling(
    plan: CappingPlan,
    cap_w: FloatArray,
    sync_job: NDArray[np.int32],
    activity: FloatArray,
) -> FloatArray | None:
    """Per GPU, the cap at which it keeps its synchronous job's pace (inf outside one). Units: W.

    A synchronous job (data-parallel training) steps at its slowest GPU: a member whose breaker
    or tier share left it less power holds every other member back, and what those draw above
    its pace buys nothing. Under the policy's power model a GPU's clock is a function, the same
    for every model, of b = (cap - idle) / (dynamic range x activity), so members keep the pace
    of the slowest one exactly when their b is at most its b: the ceiling puts them there. None
    when no job is held back (every member's cap above its full draw), which costs nothing more.
    Members of one job share their activity; the peak-held one is used so that a communication
    dip does not read as a lower pace.
    """
    if sync_job.shape != cap_w.shape:
        raise PolicyError(f"sync_job must have shape ({cap_w.size},)")
    n_jobs = int(sync_job.max()) + 1 if sync_job.size else 0
    if n_jobs <= 0:
        return None
    # GPUs in no job join a last, never-held pseudo-job: one gather then serves every GPU.
    idx = np.where(sync_job < 0, n_jobs, sync_job)
    dynamic = np.maximum(activity, MIN_ACTIVITY)
    np.minimum(dynamic, 1.0, out=dynamic)
    dynamic *= dynamic_range(plan)
    pace = np.subtract(cap_w, plan.idle_w)
    np.divide(pace, dynamic, out=pace)
    job_pace = np.ones(n_jobs + 1)
    np.minimum.at(job_pace, idx, pace)
    free = job_pace >= 1.0 - PACE_TOL
    free[n_jobs] = True
    if free.all():
        return None
    # A free job's members get an infinite pace, so their ceiling is no ceiling.
    job_pace[free] = np.inf
    ceiling = job_pace[idx]
    ceiling *= dynamic
    ceiling += plan.idle_w
    return ceiling


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
) -> FloatArray:
    """What each GPU would draw uncapped, from recent power, with headroom. Units: W.

    A compute-bound GPU running at the clock ceiling issued last tick (`ceiling_mhz`) is held back
    by that ceiling just as by a cap, so it counts as pinned too; otherwise a conservative ceiling
    would shrink its cap tick after tick and hand its power to lower tiers. A memory-bound GPU at
    its ceiling is not: that ceiling costs it at most the DVFS loss budget, by design.

    A GPU drawing within `pinned_frac` of its cap is held back by it, so its real demand is
    unknown and at least the cap: it asks for the cap plus headroom, and keeps asking more each
    tick while it stays pinned and power is free. A GPU idle by utilisation asks only for what it
    draws. Every result is within [min cap, max cap], so idle GPUs still get the min cap.

    The result goes into `out` when given (the warm path passes a scratch buffer, since the
    demand hold makes the fresh array), else into a fresh array.
    """
    scratch = plan.scratch
    power, cap = fleet.power_w, fleet.cap_w
    threshold = np.multiply(cap, settings.pinned_frac, out=scratch.f("w0"))
    pinned = np.greater_equal(power, threshold, out=scratch.b("b0"))
    if ceiling_mhz is not None and ceiling_mhz.shape == power.shape:
        reach = np.add(fleet.sm_clock_mhz, plan.clock_step_mhz, out=scratch.f("w1"))
        at_ceiling = np.greater_equal(reach, ceiling_mhz, out=scratch.b("b1"))
        below_max = np.less(ceiling_mhz, plan.max_clock_mhz, out=scratch.b("b2"))
        np.logical_and(at_ceiling, below_max, out=at_ceiling)
        # Compute-bound and busy: SM activity at least `memory_bound_ratio` of memory activity.
        bound = np.multiply(fleet.mem_util, memory_bound_ratio, out=scratch.f("w2"))
        compute = np.greater_equal(fleet.util, bound, out=below_max)
        np.logical_and(at_ceiling, compute, out=at_ceiling)
        busy = np.greater(fleet.util, 0.0, out=compute)
        np.logical_and(at_ceiling, busy, out=at_ceiling)
        np.logical_or(pinned, at_ceiling, out=pinned)
    base = np.multiply(cap, pinned, out=scratch.f("w1"))  # the cap where pinned ...
    np.maximum(base, power, out=base)  # ... so this is max(power, cap) if pinned, else power
    demand = np.multiply(base, 1.0 + settings.demand_headroom_frac, out=scratch.f("w2"))
    floor = np.add(base, settings.demand_headroom_min_w, out=threshold)
    np.maximum(demand, floor, out=demand)
    # Idle GPUs ask only for `base`. Headroom makes demand >= base elsewhere, so zeroing the
    # idle entries and taking the maximum with `base` selects exactly (np.where with a mask
    # this irregular costs several times the arithmetic). A negative `base` becomes 0 here,
    # which the min cap (> 0) overrides just the same.
    busy = np.less_equal(fleet.util, 0.0, out=scratch.b("b1"))
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


def allowed_site_power(
    topology: Topology,
    *,
    limits: Limits,
    settings: CappingSettings,
    state: DecisionState | None,
    now_s: float,
) -> float:
    """The site power the allocation may use this tick. Units: W.

    The hard figure is the lowest of the site rating and `limits.site_limit_w`; a softer
    `site_target_w` may sit below it. With ramp limits set, the allowed power moves from the
    previous tick's towards the target by at most the ramp times the elapsed time, so recoveries
    and voluntary cuts are gentle on the grid; it never exceeds the hard figure, so a limit that
    drops is obeyed at once (safety first). Caps cannot raise a draw that falls on its own (a
    synchronous job entering its communication phase): that needs filler work or storage.
    """
    hard = float(topology.levels[-1].usable_w[0])
    if limits.site_limit_w is not None:
        hard = min(hard, limits.site_limit_w)
    hard *= 1.0 - settings.site_margin_frac
    target = hard if limits.site_target_w is None else min(hard, limits.site_target_w)
    if state is None or not np.isfinite(state.site_allowed_w):
        return target
    dt = max(now_s - state.now_s, 0.0)
    allowed = target
    if settings.site_ramp_up_w_per_s is not None:
        allowed = min(allowed, state.site_allowed_w + settings.site_ramp_up_w_per_s * dt)
    if settings.site_ramp_down_w_per_s is not None:
        allowed = max(allowed, state.site_allowed_w - settings.site_ramp_down_w_per_s * dt)
    return min(allowed, hard)


def smooth_caps(
    plan: CappingPlan,
    *,
    target_w: FloatArray,
    previous_w: FloatArray,
    min_w: FloatArray,
    dt_s: float,
    settings: CappingSettings,
    usable_w: tuple[FloatArray, ...],
    target_used_w: tuple[FloatArray, ...],
    max_w: FloatArray | None = None,
) -> FloatArray:
    """Apply the raise rate limit and the deadband without breaking any limit. Units: W.

    Raises are limited to `raise_rate_w_per_s` and skipped under the deadband (both only leave
    caps lower, which is always safe). A decrease under the deadband is skipped only where every
    group above the GPU still fits with the old cap kept; elsewhere the cut is applied exactly.
    Previous caps are first clamped into [`min_w`, `max_w`] (`max_w` defaults to the models'
    max caps), so a cap from outside a model's range is never kept.
    """
    return _smooth(
        plan,
        target_w=target_w,
        previous_w=previous_w,
        min_w=min_w,
        max_w=plan.topology.gpu_max_cap_w if max_w is None else max_w,
        dt_s=dt_s,
        settings=settings,
        usable_w=usable_w,
        target_used_w=target_used_w,
    )[0]


def _smooth(
    plan: CappingPlan,
    *,
    target_w: FloatArray,
    previous_w: FloatArray,
    min_w: FloatArray,
    max_w: FloatArray,
    dt_s: float,
    settings: CappingSettings,
    usable_w: tuple[FloatArray, ...],
    target_used_w: tuple[FloatArray, ...],
    out: FloatArray | None = None,
) -> tuple[FloatArray, tuple[FloatArray, ...] | None]:
    """`smooth_caps`, plus the caps' group sums when the deadband check had to compute them.

    The decision reports those sums as its budget, so handing them back spares a second pass.
    """
    scratch = plan.scratch
    previous = np.maximum(previous_w, min_w, out=scratch.f("w0"))
    np.minimum(previous, max_w, out=previous)
    # min(target, previous + rate * dt) is the rate-limited raise, and the target itself
    # whenever the target is not a raise.
    ceiling = np.add(previous, settings.raise_rate_w_per_s * dt_s, out=scratch.f("w1"))
    cap = np.minimum(target_w, ceiling, out=scratch.f("w2"))
    change = np.subtract(cap, previous, out=ceiling)
    kept_cut = np.less(change, 0.0, out=scratch.b("b0"))
    np.abs(change, out=change)
    small = np.less(change, settings.deadband_w, out=scratch.b("b1"))
    np.logical_and(kept_cut, small, out=kept_cut)
    # previous where small, else cap. Both are finite, so multiplying by the mask and its
    # complement and adding selects exactly; np.where is several times slower on a mask this
    # irregular.
    kept = np.multiply(previous, small, out=previous)
    out = np.multiply(cap, np.logical_not(small, out=small), out=out)
    np.add(out, kept, out=out)
    if not kept_cut.any():
        return out, None
    used = _group_use(plan, out)
    over = np.zeros(plan.n_servers, dtype=np.bool_)
    # Coarsest first: an overfull site (the usual case under a binding site limit) puts every
    # server under an overfull group, and the finer levels need no look.
    for k in reversed(range(plan.n_levels)):
        bound = np.maximum(usable_w[k], target_used_w[k])
        tol = REL_TOL * np.maximum(np.abs(bound), 1.0)
        group_over = used[k] > bound + tol
        if k == plan.n_levels - 1 and group_over.all():
            over[:] = True
            break
        over |= group_over[plan.server_path[k]]
    if not over.any():
        return out, used
    # Kept cuts under an overfull group take their target after all. A kept cut sits above
    # its target and every other cap at or below it, so on the servers concerned that is
    # min(cap, target), exactly, without finding the kept cuts one by one.
    if over.all():
        np.minimum(out, target_w, out=out)
    elif plan.gpus_per_server:
        shape = (plan.n_servers, plan.gpus_per_server)
        rows, targets = out.reshape(shape), target_w.reshape(shape)
        servers = np.flatnonzero(over)
        rows[servers] = np.minimum(rows[servers], targets[servers])
    else:
        revert = np.logical_and(kept_cut, over[plan.gpu_server], out=kept_cut)
        np.copyto(out, target_w, where=revert)
    return out, None


def _stale_caps(
    plan: CappingPlan,
    stale_gpu: BoolArray,
    state: DecisionState | None,
    tier: NDArray[np.int8],
    usable_w: tuple[FloatArray, ...],
) -> FloatArray:
    """What each stale GPU keeps this tick (others: their min cap). Units: W.

    A stale GPU may draw up to its cap in force: the last cap issued (clamped to its model's
    range), or its max cap when nothing was issued yet. The limits are filled with those caps
    first, every reporting GPU at its floor: where they fit, every stale GPU keeps its cap; where
    they do not, the cut goes by tier and water-filling like any other, so the sum fits at once.
    """
    topo = plan.topology
    min_cap, max_cap = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    in_force = max_cap if state is None else np.clip(state.cap_w, min_cap, max_cap)
    wanted = np.where(stale_gpu, in_force, min_cap)
    # Usually every group holds them (a cut is only needed when a limit fell while they were
    # blind): one pass of group sums shows it, and spares the fill.
    fits = all(
        np.all(used <= usable + REL_TOL * np.maximum(np.abs(usable), 1.0))
        for used, usable in zip(_group_use(plan, wanted), usable_w, strict=True)
    )
    if fits:
        return wanted
    return allocate(
        plan, floor_w=min_cap, demand_w=wanted, max_w=wanted, tier=tier, usable_w=usable_w
    ).cap_w


def _group_use(plan: CappingPlan, cap_w: FloatArray) -> tuple[FloatArray, ...]:
    sums = plan.up(plan.server_sum(cap_w))
    return tuple(s + o for s, o in zip(sums, plan.overhead_w, strict=True))


def _stale_gpus(plan: CappingPlan, stale_rack: NDArray[np.bool_] | None) -> BoolArray | None:
    if stale_rack is None:
        return None
    racks = np.asarray(stale_rack, dtype=np.bool_)
    if racks.shape != (plan.topology.n_racks,):
        raise PolicyError(f"stale_rack must have shape ({plan.topology.n_racks},)")
    if not racks.any():
        return None
    return racks[plan.gpu_rack]
