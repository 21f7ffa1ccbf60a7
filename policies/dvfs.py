"""SM-clock ceilings from each GPU's cap and how memory-bound its work is.

The policy's model is deliberately simple (the simulator calibrates the physics separately):

- throughput fraction = (f / f_max) ** alpha, with a low alpha for memory-bound work;
- power = P_idle + (P_max_cap - P_idle) * activity * (f / f_max) ** beta, activity = SM util.

Memory-bound work (SM activity below `memory_bound_ratio` of memory activity, e.g. LLM decode)
gets the lowest clock keeping throughput within `max_loss_frac`: locking clocks beats capping
there (arXiv 2605.11999). Compute-bound work whose cap binds gets the clock at which its power
fits the cap, so the GPU does not fight its own power limiter. Clocks sit on each model's
15 MHz grid inside its range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from policies.decision import DvfsSettings
from policies.plan import CappingPlan
from policies.tiers import DEFAULT_FLEX_TOLERANCES
from policies.workspace import DecisionWorkspace

FloatArray = NDArray[np.float64]

#: Throughput exponent of memory-bound work: CALIBRATION gives alpha 0.05-0.3 for LLM decode
#: (arXiv 2605.11999, arXiv 2501.08219); 0.15 is mid-range, so a 2 % loss allows f ~ 0.87 f_max.
ALPHA_MEMORY_BOUND = 0.15
#: Power exponent in clock: CALIBRATION gives beta 2-3; 3 is the cube law of dynamic power with
#: voltage scaling, and as the highest exponent it picks the highest clock that plausibly fits.
BETA_POWER = 3.0
#: Below this memory activity a GPU is idle rather than memory-bound: its clock is left alone.
MIN_ACTIVITY = 0.05


def clock_targets(
    plan: CappingPlan,
    *,
    cap_w: FloatArray,
    util: FloatArray,
    mem_util: FloatArray,
    settings: DvfsSettings,
    fit_util: FloatArray | None = None,
    tier: NDArray[np.int8] | None = None,
    tolerances: Sequence[float] = DEFAULT_FLEX_TOLERANCES,
    out: FloatArray | None = None,
    workspace: DecisionWorkspace | None = None,
) -> tuple[FloatArray, float]:
    """Per-GPU SM-clock ceilings (MHz) and the estimated power they save against the caps (W).

    `fit_util`, when given, is the SM activity the cap-fitting clock is computed for (the caller
    passes a peak-held activity): a synchronous job's compute phase starts at full activity right
    after a quiet all-reduce, and a ceiling sized for the quiet phase would leave the GPU's own
    limiter to catch the surge, overshooting the cap until it settles. Memory-bound detection
    uses it too: work is memory-bound only while both activities are low against memory
    activity, so mixed work (prefill bursts between decode) keeps `max_loss_frac`. Per-GPU model
    figures come from the plan; intermediates live in `workspace` (a fresh one when None).

    `tier` (one Flex tier per GPU, validated by the caller) with `tolerances` (the tolerated
    slowdown per tier) bounds each memory-bound GPU's loss by its tier's tolerance as well as by
    `max_loss_frac`. Without `tier` every GPU may lose `max_loss_frac`, which is only right when
    no tier tolerates less.
    """
    max_clock = plan.max_clock_mhz
    if not settings.enabled or cap_w.size == 0:
        return max_clock.copy(), 0.0
    ws = DecisionWorkspace(plan.topology.n_gpus) if workspace is None else workspace
    buffers = ws.clocks
    if fit_util is None or settings.memory_bound_ratio <= 0.0:
        activity = np.clip(util, 0.0, 1.0, out=buffers.activity)
    else:
        # Detection looks at the higher of the current and the held activity: a GPU that ran
        # compute (prefill, a training step) within the hold is not locked in its quiet phase,
        # where the lock would slow the compute that follows by alpha 1.1, not 0.15. Only
        # compared with a positive bound (memory activity >= MIN_ACTIVITY times a positive
        # ratio), where clipping below at 0 changes no outcome; the fit clips `fit_util` below.
        activity = np.maximum(util, fit_util, out=buffers.activity)
        np.minimum(activity, 1.0, out=activity)
    memory_bound = np.greater_equal(mem_util, MIN_ACTIVITY, out=buffers.memory_bound)
    ratio_w = np.multiply(mem_util, settings.memory_bound_ratio, out=buffers.ratio_w)
    low_sm = np.less(activity, ratio_w, out=buffers.low_sm)
    np.logical_and(memory_bound, low_sm, out=memory_bound)
    # Within [0, 1] whatever the caller passes (the edges bound it too): a loss above 1 would
    # raise a negative number to a fractional power.
    loss = min(max(settings.max_loss_frac, 0.0), 1.0)
    lowest = _lowest_clock(plan, ws, _keep_frac(loss))
    if tier is not None:
        lowest = _bound_by_tier(
            plan,
            ws,
            tier=tier,
            tolerances=tolerances,
            loss=loss,
            memory_bound=memory_bound,
            lowest=lowest,
        )
    # The lowest clock where memory-bound, else the max: 0 <= lowest <= max, so zeroing the max
    # where memory-bound and taking the maximum with `lowest` selects exactly, and several times
    # faster than np.where on a mask this irregular.
    other = np.logical_not(memory_bound, out=low_sm)
    clock = np.multiply(max_clock, other, out=out)
    np.maximum(clock, lowest, out=clock)

    # Power at full clock under the policy's model: idle + (max cap - idle) * activity.
    if fit_util is not None:
        activity = np.maximum(fit_util, 0.0, out=activity)
        np.minimum(activity, 1.0, out=activity)
    dynamic_w = np.multiply(plan.dynamic_w, activity, out=buffers.dynamic_w)
    full_w = np.add(plan.idle_w, dynamic_w, out=buffers.full_w)
    # The clock where idle + dynamic * (f / f_max)^3 equals the cap, floored onto the grid.
    # Computed for every GPU without a mask (masked ufuncs are slower than the arithmetic):
    # where the cap does not bind, the fitting clock is at or above the max and changes nothing.
    fits = np.subtract(cap_w, plan.idle_w, out=buffers.fits)
    np.maximum(fits, 0.0, out=fits)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.divide(fits, dynamic_w, out=fits)
    np.cbrt(fits, out=fits)
    np.multiply(fits, max_clock, out=fits)
    # Where the cap does not bind, the max: a model whose max clock is off the grid counted from
    # its min (a GB200's 2062 MHz against 345 + 15 k) would otherwise get the grid clock below
    # it, a ceiling under every unbound cap, which also reads to the demand estimate as a GPU
    # held back by its ceiling and grows its cap tick after tick.
    unbound = np.greater_equal(fits, max_clock, out=buffers.memory_bound)
    np.subtract(fits, plan.min_clock_mhz, out=fits)
    np.divide(fits, plan.clock_step_mhz, out=fits)
    np.floor(fits, out=fits)
    np.multiply(fits, plan.clock_step_mhz, out=fits)
    np.add(fits, plan.min_clock_mhz, out=fits)
    # fmax, not maximum: 0/0 (no activity and a cap at or below idle) is NaN, and no clock
    # then fits better than the lowest.
    np.fmax(fits, plan.min_clock_mhz, out=fits)
    np.maximum(fits, np.multiply(max_clock, unbound, out=buffers.swing), out=fits)
    if settings.fit_compute_bound:
        if fit_util is not None and settings.fit_min_swing > 0.0:
            # Steady where the held activity is within the swing of the current one: there the
            # fitting clock is lifted to the max (max * 1 >= fits), elsewhere left as fitted.
            swing = np.subtract(fit_util, util, out=buffers.swing)
            steady = np.less(swing, settings.fit_min_swing, out=buffers.memory_bound)
            lift = np.multiply(max_clock, steady, out=buffers.swing)
            np.maximum(fits, lift, out=fits)
        np.minimum(clock, fits, out=clock)

    # Saving against running at the cap: min(full, cap) - min(power at the clock, cap); zero
    # wherever the clock is the max.
    ratio = np.divide(clock, max_clock, out=buffers.swing)
    cube = np.multiply(ratio, ratio, out=buffers.cube)
    np.multiply(cube, ratio, out=cube)
    at_clock = np.multiply(dynamic_w, cube, out=cube)
    np.add(at_clock, plan.idle_w, out=at_clock)
    np.minimum(at_clock, cap_w, out=at_clock)
    np.minimum(full_w, cap_w, out=full_w)
    saving = np.subtract(full_w, at_clock, out=full_w)
    return clock, float(saving.sum())


def _bound_by_tier(
    plan: CappingPlan,
    workspace: DecisionWorkspace,
    *,
    tier: NDArray[np.int8],
    tolerances: Sequence[float],
    loss: float,
    memory_bound: NDArray[np.bool_],
    lowest: FloatArray,
) -> FloatArray:
    """Per GPU, the lowest clock its tier allows a memory-bound lock. Units: MHz.

    Tiers that tolerate at least `loss` keep `lowest`; a tier that tolerates none is taken out of
    `memory_bound` (in place), which costs one comparison rather than a per-GPU table; a tier in
    between gets the clock its own tolerance allows. `lowest` is the workspace's cache and is
    never written: a copy is made the first time a tier needs its own clock.
    """
    result = lowest
    in_tier = workspace.clocks.in_tier
    for t, tolerance in enumerate(tolerances):
        tier_loss = min(max(float(tolerance), 0.0), loss)
        if tier_loss >= loss:
            continue
        np.equal(tier, t, out=in_tier)
        if tier_loss <= 0.0:
            np.logical_and(memory_bound, np.logical_not(in_tier, out=in_tier), out=memory_bound)
            continue
        if result is lowest:
            result = workspace.tier_lowest()
            np.copyto(result, lowest)
        np.copyto(result, _lowest_clock(plan, workspace, _keep_frac(tier_loss)), where=in_tier)
    return result


def _keep_frac(loss: float) -> float:
    """The clock fraction at which memory-bound work loses `loss` of its throughput."""
    return float((1.0 - loss) ** (1.0 / ALPHA_MEMORY_BOUND))


def _lowest_clock(plan: CappingPlan, workspace: DecisionWorkspace, keep_frac: float) -> FloatArray:
    """Per GPU, the lowest grid clock at or above `keep_frac` of its max. Units: MHz.

    The same for every GPU of a model and fixed by the loss budget, so it is cached in the
    workspace under the fraction it was computed for.
    """
    out, held = workspace.lowest_clock(plan, keep_frac)
    if held:
        return out
    lo, hi, step = plan.min_clock_mhz, plan.max_clock_mhz, plan.clock_step_mhz
    # A large loss budget asks for a fraction of the max below the model's lowest clock (an
    # H100 at 300 MHz against 345): the ceiling is then the lowest clock the GPU supports.
    np.clip(lo + np.ceil((keep_frac * hi - lo) / step) * step, lo, hi, out=out)
    return out
