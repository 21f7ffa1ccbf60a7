"""Tier floors: the cap that keeps each GPU within its Flex tier's tolerated slowdown.

The allocation keeps every GPU at its tier floor, Flex 0 first, before any tier gets more, so a
cut takes from the tolerant tiers' slack before it slows anyone past their tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.dr.flex import check_tolerances
from policies.dvfs import BETA_POWER
from policies.plan import CappingPlan
from policies.workspace import DecisionWorkspace

FloatArray = NDArray[np.float64]

#: Clock fraction below which core voltage stops falling, so power falls only linearly with the
#: clock: 0.85, fitted to the Zeus power-limit sweeps of the A40 (0.90) and V100 (0.80) (NSDI
#: 2023; simulator/data/CALIBRATION.md). Used for the tier floors, where cuts reach below it.
FLOOR_KNEE = 0.85
#: Throughput exponent of compute-bound work in the clock, fitted to the same sweeps (1.1).
FLOOR_ALPHA = 1.1
#: GPUs per block of `tier_floor_caps`: its twenty-odd steps run one block at a time, so that
#: their temporaries stay in cache instead of streaming the whole fleet through memory each.
FLOOR_BLOCK = 1 << 17
#: Least clock fraction believed when a held-back GPU's U is read from its clock: below it (a
#: clock not reported, or a GPU parked) g is too small to divide by, and U comes out so large
#: that it bounds nothing.
MIN_CLOCK_FRAC = 0.05
#: Least draw over idle in that reading, so that an idle GPU's 0 / 0 cannot arise. Units: W.
MIN_OVER_IDLE_W = 1e-6


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
    held: FloorHold | None = None,
    headroom: tuple[float, float] = (0.0, 0.0),
    held_back: NDArray[np.bool_] | None = None,
    raw_w: FloatArray | None = None,
    workspace: DecisionWorkspace | None = None,
    power_w: FloatArray | None = None,
    sm_clock_mhz: FloatArray | None = None,
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

    The demand estimate carries headroom over the held draw (`headroom`: the fraction and the least
    watts of `CappingSettings.demand_headroom_frac` and `demand_headroom_min_w`), so a capped GPU's
    rising demand shows. On GPUs drawing under their caps (all but those `held_back` marks: pinned
    at a cap or a clock ceiling; None: all) U leaves it out, their draw being what they want: floors
    from it would reserve, before any lower tier's floor, power no GPU draws (a tenth of Flex 0's
    draw, whose floor is its whole U), and the tier phases still grant the headroom in tier order.
    With `power_w` that draw is read, not undone from the estimate, which the headroom may have
    taken to the max cap (and which, on a tier that tolerates no slowdown, carries the pinned
    headroom, `policies.demand.estimate_demand`); without it the unpinned headroom is undone. A
    GPU held back by its cap keeps it: what it would draw uncapped is unknown and above its cap,
    and the headroom is how its floor finds it. `demand_w` keeps its headroom and is raised to
    the modelled draw where that is higher.

    With its draw P and SM clock (`power_w`, `sm_clock_mhz`; None: not used), a GPU held back
    tells its U under the same model: its limiter lowered its clock to x until
    P = idle + (U - idle) g(x), so U = idle + (P - idle) / g(x). Where that is lower, it bounds
    both the held-back estimate (the cap plus the pinned headroom: a GPU barely held back
    wants a few percent over its cap, not a tenth) and the modelled draw (SM activity saturates:
    a training GPU reads 100 % busy while drawing 0.97 of full activity's power). The bound is
    never below P, and a clock that reads low for another reason (heat, a power brake) only
    raises it, which leaves the estimate as it was.

    `raw_w` is this tick's demand estimate before its peak hold (None: `demand_w` is it); U is
    held by `held` (see `FloorHold`) instead, which receives the U held this tick; where that
    raises a floor above the demand, the demand is raised to it, so the fill keeps
    floor <= demand. `activity` is the peak-held SM activity (a communication dip is no lower
    floor); `requested_w` (the demand-response floors of `Limits.gpu_floor_w`) raises the
    floor where higher.
    Results stay within [floor, max] (a stale GPU, floor = max = its kept cap, keeps it). The
    floors go into the workspace's `tier_floor` (a fresh workspace when None).
    """
    ws = DecisionWorkspace(plan.topology.n_gpus) if workspace is None else workspace
    keep, rest = _tier_keep(plan, ws, tier, tuple(tolerances))
    raw = demand_w if raw_w is None else raw_w
    n = demand_w.shape[0]
    # A mask that is all one thing (every GPU in a synchronous job, or none) is no mask: the
    # masked maximum costs several times the plain one.
    with_draw: NDArray[np.bool_] | bool = held is None
    if held is not None and held.with_draw is not None and held.with_draw.any():
        with_draw = True if held.with_draw.all() else held.with_draw
    for start in range(0, n, FLOOR_BLOCK):
        _floor_block(
            slice(start, min(start + FLOOR_BLOCK, n)),
            plan,
            ws,
            demand_w=demand_w,
            raw_w=raw,
            activity=activity,
            floor_w=floor_w,
            max_w=max_w,
            keep=keep,
            rest=rest,
            requested_w=requested_w,
            held=held,
            headroom=headroom,
            held_back=held_back,
            with_draw=with_draw,
            power_w=power_w,
            sm_clock_mhz=sm_clock_mhz,
        )
    return ws.tier_floor


def _floor_block(
    part: slice,
    plan: CappingPlan,
    ws: DecisionWorkspace,
    *,
    demand_w: FloatArray,
    raw_w: FloatArray,
    activity: FloatArray,
    floor_w: FloatArray,
    max_w: FloatArray,
    keep: FloatArray,
    rest: FloatArray,
    requested_w: FloatArray | None,
    held: FloorHold | None,
    headroom: tuple[float, float],
    held_back: NDArray[np.bool_] | None,
    with_draw: NDArray[np.bool_] | bool,
    power_w: FloatArray | None = None,
    sm_clock_mhz: FloatArray | None = None,
) -> None:
    """`tier_floor_caps` on the GPUs of `part`, its temporaries at the head of the workspace's
    buffers, so that they stay in cache from one step to the next. The present U includes the
    modelled draw where `with_draw` says (True: everywhere, False: nowhere)."""
    size = part.stop - part.start
    demand, raw, cap = demand_w[part], raw_w[part], max_w[part]
    draw = np.multiply(activity[part], plan.dynamic_w[part], out=ws.modelled_draw[:size])
    np.add(draw, plan.idle_w[part], out=draw)
    # U: the held draw under the demand's headroom (d = max(b (1 + frac), b + least) for a busy
    # GPU, so b = min(d / (1 + frac), d - least); an idle GPU's, lower, is lifted to its floor
    # below), or the modelled draw where higher (a GPU held at a low cap draws its cap).
    present = ws.floor_basis[:size]
    if held_back is None:
        np.copyto(present, raw)
    elif power_w is not None:
        # With the draw at hand, a GPU not held back draws what it wants: its U is its draw
        # (the demand's base), known even where the headroom took its estimate to the max cap,
        # which undone would reserve the max for a service drawing a tenth under it. Held back,
        # the raw estimate (bounded by the clock reading below). A blend by the 0/1 mask:
        # np.copyto with a mask this irregular costs several times the arithmetic.
        scratch = ws.floor_scratch[:size]
        np.copyto(scratch, held_back[part])
        draw_now = power_w[part]
        np.subtract(raw, draw_now, out=present)
        present *= scratch
        present += draw_now
    else:
        frac, least = headroom
        # The raw estimate where held back, or where it was clipped at the max cap (the draw
        # under it is unknown): there the divisor is 1 and the least headroom 0, which selects
        # it exactly. np.copyto with a mask this irregular costs several times the arithmetic.
        free = np.greater_equal(raw, cap, out=ws.floor_mask[:size])
        np.logical_or(free, held_back[part], out=free)
        np.logical_not(free, out=free)
        # 0/1 as floats once: arithmetic on the mask itself casts it at every use.
        scratch = ws.floor_scratch[:size]
        np.copyto(scratch, free)
        taken = np.multiply(scratch, least, out=present)
        divisor = np.multiply(scratch, frac, out=ws.floor_extra[:size])
        np.subtract(raw, taken, out=present)
        divisor += 1.0
        np.minimum(np.divide(raw, divisor, out=divisor), present, out=present)
    if power_w is not None and sm_clock_mhz is not None and held_back is not None:
        implied = _clock_implied(
            part, plan, ws, power_w=power_w, sm_clock_mhz=sm_clock_mhz, held_back=held_back
        )
        np.minimum(present, implied, out=present)
        np.minimum(draw, implied, out=draw)
    if with_draw is True:
        np.maximum(present, draw, out=present)
    elif with_draw is not False:
        np.maximum(present, draw, out=present, where=with_draw[part])
    np.minimum(present, cap, out=present)
    np.maximum(demand, draw, out=demand)
    np.minimum(demand, cap, out=demand)
    basis = present
    if held is not None:
        # The modelled draw joins after the hold where the hold leaves it out: it is the held
        # activity's already. `present` is dead once held.
        basis = np.maximum(held.hold_part(present, cap, part), draw, out=present)
        np.minimum(basis, cap, out=basis)
    out = np.multiply(basis, keep[part], out=ws.tier_floor[part])
    np.add(out, rest[part], out=out)  # idle (1 - k) + U k = idle + (U - idle) k <= U, as k <= 1
    if requested_w is not None:
        np.maximum(out, requested_w[part], out=out)
        np.minimum(out, basis, out=out)
    np.maximum(out, floor_w[part], out=out)
    if held is not None:
        np.maximum(demand, out, out=demand)


def _clock_implied(
    part: slice,
    plan: CappingPlan,
    ws: DecisionWorkspace,
    *,
    power_w: FloatArray,
    sm_clock_mhz: FloatArray,
    held_back: NDArray[np.bool_],
) -> FloatArray:
    """Per GPU of `part`, U = idle + (P - idle) / g(x) where held back, +inf elsewhere (W).

    Held back is a multiplier of g (0 elsewhere), so the division gives +inf there without a
    masked step; the draw over idle is kept above 0 so that no 0 / 0 arises. In the floors'
    spare buffers: the scratch one and the one `tier_floor_caps` gave the divisor.
    """
    size = part.stop - part.start
    x = np.divide(sm_clock_mhz[part], plan.max_clock_mhz[part], out=ws.floor_scratch[:size])
    np.clip(x, MIN_CLOCK_FRAC, 1.0, out=x)
    g = np.maximum(x, FLOOR_KNEE, out=ws.floor_extra[:size])
    g *= g
    g *= x  # x max(x, knee)^2: the floors' g, BETA_POWER = 3
    np.copyto(x, held_back[part])
    g *= x
    over = np.subtract(power_w[part], plan.idle_w[part], out=x)
    np.maximum(over, MIN_OVER_IDLE_W, out=over)
    with np.errstate(divide="ignore"):
        implied = np.divide(over, g, out=g)
    implied += plan.idle_w[part]
    np.maximum(implied, power_w[part], out=implied)
    return implied


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorHold:
    """The uncapped draw U the floors are sized for, peak-held from tick to tick.

    U rises at once and falls towards the present U with a time constant per GPU: the demand's
    (`CappingSettings.demand_hold_s`), so a communication dip is no lower floor, and on a
    synchronous job's GPUs `CappingSettings.floor_hold_s`. Outside those jobs only the part
    from the demand estimate is held (`with_draw`): the modelled draw comes from the activity
    held for `DvfsSettings.activity_hold_s`, and held once more it kept a service's floor (its
    whole U on Flex 0) at each burst's peak for longer still, a reserve that under a binding
    limit came before the floors of every tier below. On a synchronous job's GPUs the whole U
    is held for `floor_hold_s`: a training job's checkpoint (a
    minute or more at a tenth of its compute draw) outlasts the demand and activity holds, and
    sized from them its floor would fall with its draw; the fill would hand the power to
    others, and when compute resumed the job would run below its floor until the controller had
    seen it (the telemetry delay) and its caps were back (the actuation lag).
    """

    #: Previous tick's held U per GPU (W), or None (cold: nothing held yet).
    previous_w: FloatArray | None
    #: Per GPU (or for all), share of the excess over the present U kept: exp(-dt / hold).
    keep: FloatArray | float
    #: Where this tick's held U goes: the next tick's `previous_w`.
    out: FloatArray
    #: Where the held U includes the modelled draw (`tier_floor_caps`); elsewhere only the
    #: demand estimate's part is held, and the modelled draw, from the peak-held activity
    #: already, is taken after the hold. None: nowhere.
    with_draw: NDArray[np.bool_] | None = None

    def hold(self, present_w: FloatArray, max_w: FloatArray) -> FloatArray:
        """This tick's held U: the present U, raised towards the previous one. Units: W."""
        return self.hold_part(present_w, max_w, slice(0, present_w.shape[0]))

    def hold_part(self, present_w: FloatArray, max_w: FloatArray, part: slice) -> FloatArray:
        """`hold` for the GPUs of `part` (`present_w` and `max_w` are theirs alone): the tier
        floors run block by block. Units: W."""
        held = self.out[part]
        previous = self.previous_w
        if previous is None or previous.shape != self.out.shape:
            np.copyto(held, present_w)
            return held
        np.subtract(previous[part], present_w, out=held)
        np.maximum(held, 0.0, out=held)
        held *= self.keep if isinstance(self.keep, float) else self.keep[part]
        held += present_w
        np.minimum(held, max_w, out=held)  # a stale GPU's max is its kept cap
        return held


def tier_keep_per_gpu(
    plan: CappingPlan,
    workspace: DecisionWorkspace,
    tier: NDArray[np.int8],
    tolerances: tuple[float, ...],
) -> FloatArray:
    """Per GPU, its tier's share k of dynamic power at the floor (1: no slowdown tolerated),
    from the workspace's cache (`_tier_keep`)."""
    return _tier_keep(plan, workspace, tier, tolerances)[0]


def _tier_keep(
    plan: CappingPlan,
    workspace: DecisionWorkspace,
    tier: NDArray[np.int8],
    tolerances: tuple[float, ...],
) -> tuple[FloatArray, FloatArray]:
    """Per GPU, k = g((1 - tolerance)^(1 / alpha)) of its tier, and idle x (1 - k) (W).

    Tiers change far less often than telemetry: both arrays are cached in the workspace, keyed
    by the tolerances, with a copy of the tiers they were made for.
    """
    keep, rest, held = workspace.tier_keep(plan, tier, tolerances)
    if not held:
        np.take(tier_keep(tolerances), tier.astype(np.intp), out=keep)
        np.subtract(1.0, keep, out=rest)
        np.multiply(rest, plan.idle_w, out=rest)
    return keep, rest


def tier_keep(tolerances: tuple[float, ...]) -> FloatArray:
    """Per tier, the share k of a GPU's dynamic power that keeps (1 - tolerance) of its speed:
    k = g((1 - tolerance)^(1 / alpha)), g the cube law above `FLOOR_KNEE` and linear below it."""
    clock = (1.0 - check_tolerances(tolerances)) ** (1.0 / FLOOR_ALPHA)
    table: FloatArray = clock * np.maximum(clock, FLOOR_KNEE) ** (BETA_POWER - 1.0)
    return table


def activity_floor_caps(
    *,
    idle_w: FloatArray,
    dynamic_w: FloatArray,
    activity: FloatArray,
    tier: NDArray[np.int8],
    tolerances: tuple[float, ...],
) -> FloatArray:
    """Per GPU, the tier floor of `tier_floor_caps` with the uncapped draw taken from its
    peak-held SM activity alone: idle + dynamic x activity x k of its tier. Units: W.

    For a stage that lowers the core's caps afterwards (the carbon plan's ceilings), so that a
    tier's tolerated slowdown is one control semantic whoever caps the GPU. It leaves out the
    core's other estimate of the uncapped draw, the held demand: a GPU held at a ceiling draws
    its cap, which the demand estimate reads as wanting its max cap, so a floor from it would
    keep every ceiled GPU far faster than its tier needs.
    """
    keep = tier_keep(tolerances)[tier.astype(np.intp)]
    out: FloatArray = idle_w + dynamic_w * np.clip(activity, 0.0, 1.0) * keep
    return out
