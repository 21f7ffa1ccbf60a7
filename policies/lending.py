"""Headroom lending: power GPUs are allowed but do not draw, lent to GPUs held back by their caps.

Caps that fit every limit leave power unused wherever a GPU draws less than its cap: an idle GPU
at its min cap, an inference GPU between bursts, the margin a demand estimate keeps over a GPU's
draw. Lending raises the caps of GPUs that want more (demand above their cap) by what other GPUs
in the same groups leave undrawn, so the sum of caps may exceed a limit while the expected draw
does not. Three rules keep that safe:

- **Expected draw inside every limit.** A lender's headroom is its cap less its expected draw:
  its peak-held draw (`LendSettings.hold_s`, so a synchronous job's communication dip is not
  lent) plus a margin. A group may hand out at most its lenders' headroom, so caps of borrowers
  plus expected draws of lenders stay within the group's usable limit.
- **Worst case inside the trip curve and the contract.** If every GPU jumped to its cap at once,
  a breaker would carry the sum of caps until the controller reacts (`reaction_s`: a decision
  period, telemetry and actuation). Below the site the sum of caps stays where the breaker's
  trip curve (`policies.breaker_curve`) carries it for `reaction_s / TRIP_SHARE`, so one such
  episode uses at most `TRIP_SHARE` of the breaker's thermal element; at the site it stays
  within `contract_tolerance_frac` over the usable limit.
- **Revoked at the first rise.** A GPU whose draw rises past its lend basis (the held draw its
  headroom was reckoned from) by more than its margin lends nothing on the next tick: the
  allocation without lending is recomputed every tick, so the borrowers' caps fall at once.

Revoking still takes the reaction time, so a lender whose draw rises often (a service at each
burst) puts its group over its limit, within the bounds above, now and then. `lender_classes`
(`LendSettings`) narrows the lenders to workload classes whose draw stays put: `idle`, the
GPUs no job holds, rise only when the scheduler places a job on them, where a service rises at
every burst.

The lent power is shared by `policies.capping.allocate` from the caps without lending as floors,
so the tiers keep their order: every borrower is first brought to its tier floor, Flex 0's first,
then a Flex 0 borrower is served before a Flex 3 one. Borrowers rise
no faster than the raise rate and never past their demand, so lending adds no cap nobody asked
for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from policies.breaker_curve import load_carried_for
from policies.capping import allocate
from policies.decision import LendSettings
from policies.demand import hold_demand
from policies.workspace import DecisionWorkspace

if TYPE_CHECKING:
    from policies.plan import CappingPlan

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Share of a breaker's thermal element one worst-case episode may use (`LendSettings`): at most
#: a tenth, so even ten episodes back to back, with no cooling between them, stay short of a
#: trip.
TRIP_SHARE = 0.1


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class LendResult:
    """Caps with lending, their group sums, the next lend basis, and what was lent. Units: W."""

    cap_w: FloatArray
    used_w: tuple[FloatArray, ...] | None
    basis_w: FloatArray
    lent_w: float


def worst_case_bounds(
    plan: CappingPlan,
    usable_w: tuple[FloatArray, ...],
    settings: LendSettings,
    non_gpu_rise_w: tuple[FloatArray, ...] | None = None,
) -> tuple[FloatArray, ...]:
    """Per level, the most the sum of caps (plus overhead) may reach with lending. Units: W.

    Below the site: the rated limit times the load the trip curve carries for
    `reaction_s / TRIP_SHARE` (never under the usable limit); an unrated level (inf) stays
    unbounded. The site: `usable_w[-1]` (the contract, demand response and ramp already in it)
    times 1 + `contract_tolerance_frac`.

    `non_gpu_rise_w` (per level; None: nothing) is how far non-GPU power may rise above what the
    plan budgets (its peak less the measured figure, `policies.non_gpu`). Servers' non-GPU power
    follows their GPUs' load, so in the worst case, every GPU at its cap, it is at its peak: the
    bounds are lowered by the rise, and what the measurement freed is not lent a second time.
    """
    load = load_carried_for(settings.reaction_s / TRIP_SHARE)
    levels = plan.topology.levels
    bounds = [
        np.maximum(lv.limit_w * load, usable) for lv, usable in zip(levels, usable_w, strict=True)
    ]
    bounds[-1] = usable_w[-1] * (1.0 + settings.contract_tolerance_frac)
    if non_gpu_rise_w is not None:
        bounds = [b - rise for b, rise in zip(bounds, non_gpu_rise_w, strict=True)]
    return tuple(bounds)


def lend_step(
    plan: CappingPlan,
    *,
    cap_w: FloatArray,
    previous_w: FloatArray,
    power_w: FloatArray,
    demand_w: FloatArray,
    max_w: FloatArray,
    tier: NDArray[np.int8],
    usable_w: tuple[FloatArray, ...],
    basis_w: FloatArray | None,
    dt_s: float,
    raise_w: float,
    settings: LendSettings,
    frozen: BoolArray | None = None,
    out: FloatArray | None = None,
    workspace: DecisionWorkspace | None = None,
    non_gpu_rise_w: tuple[FloatArray, ...] | None = None,
    tier_floor_w: FloatArray | None = None,
    lender: BoolArray | None = None,
) -> LendResult:
    """Caps with headroom lent to GPUs that want more (module doc). Units: W.

    `cap_w` are the caps without lending (the allocation after anti-chatter), `previous_w` the
    caps issued last tick (lending included), `demand_w` the held demand estimate, `max_w` each
    GPU's highest cap, `basis_w` the lend basis from last tick (None: cold, nothing is lent, the
    basis starts), `raise_w` the most a cap may rise this tick. `frozen` GPUs (stale racks)
    neither lend nor borrow. `non_gpu_rise_w` is `worst_case_bounds`' (measured non-GPU power
    below its peak). `tier_floor_w` (None: none) are the tier floors: lent power first brings
    borrowers up to them in tier order, as the fill does, then to their demand in strict tier
    order; without them a Flex 3 GPU under its floor waited behind every Flex 0-2 GPU's demand.
    `lender` (None: every GPU) marks the GPUs that may lend (`lenders`); the others still borrow.
    The caps go into `out` when given; `cap_w` is left as it is.
    Temporaries live in `workspace` (a fresh one when None).
    """
    ws = DecisionWorkspace(plan.topology.n_gpus) if workspace is None else workspace
    buffers = ws.lend()
    basis = _hold(power_w, basis_w, dt_s=dt_s, hold_s=settings.hold_s)
    margin = np.multiply(basis, settings.margin_frac, out=buffers.margin)
    np.maximum(margin, settings.margin_w, out=margin)
    if basis_w is None:
        return LendResult(cap_w=cap_w, used_w=None, basis_w=basis, lent_w=0.0)
    # Borrowers: GPUs whose demand exceeds their cap, up to that demand, the raise rate and max.
    reach = np.maximum(previous_w, cap_w, out=buffers.reach)
    reach += raise_w
    np.minimum(reach, demand_w, out=reach)
    np.minimum(reach, max_w, out=reach)
    np.maximum(reach, cap_w, out=reach)
    if frozen is not None:
        np.copyto(reach, cap_w, where=frozen)
    wanted = np.subtract(reach, cap_w, out=buffers.wanted)
    # Headroom: cap less expected draw (held draw + margin); nothing where the draw rose past
    # last tick's basis by more than the margin (revoked), from a borrower or a frozen GPU.
    headroom = np.subtract(cap_w, basis, out=buffers.headroom)
    headroom -= margin
    np.maximum(headroom, 0.0, out=headroom)
    rising = np.subtract(power_w, basis_w, out=buffers.rise)
    keep = np.less_equal(rising, margin, out=buffers.keep)
    np.logical_and(keep, np.less_equal(wanted, 0.0, out=buffers.free), out=keep)
    if frozen is not None:
        np.logical_and(keep, np.logical_not(frozen), out=keep)
    if lender is not None:
        np.logical_and(keep, lender, out=keep)
    headroom *= keep
    if not wanted.any() or not headroom.any():
        return LendResult(cap_w=cap_w, used_w=None, basis_w=basis, lent_w=0.0)
    lendable = plan.up(plan.server_sum(headroom))
    bounds = worst_case_bounds(plan, usable_w, settings, non_gpu_rise_w)
    base_use = plan.up(plan.server_sum(cap_w))
    widened = tuple(
        np.maximum(np.minimum(usable + credit, bound), used + overhead)
        for usable, credit, bound, used, overhead in zip(
            usable_w, lendable, bounds, base_use, plan.overhead_w, strict=True
        )
    )
    floors = None
    if tier_floor_w is not None:
        # cap <= floor <= reach, as the fill requires; `rise` is dead once `keep` is made.
        floors = np.clip(tier_floor_w, cap_w, reach, out=buffers.rise)
    alloc = allocate(
        plan,
        floor_w=cap_w,
        demand_w=reach,
        max_w=reach,
        tier=tier,
        usable_w=widened,
        tier_floor_w=floors,
        out=out,
        workspace=ws,
    )
    lent = float(alloc.used_w[-1].sum() - base_use[-1].sum() - plan.overhead_w[-1].sum())
    return LendResult(cap_w=alloc.cap_w, used_w=alloc.used_w, basis_w=basis, lent_w=max(lent, 0.0))


def _hold(
    power_w: FloatArray, previous_w: FloatArray | None, *, dt_s: float, hold_s: float
) -> FloatArray:
    """Peak-held draw (`policies.demand.hold_demand`), a fresh array: it becomes decision
    state. Units: W."""
    held = hold_demand(power_w, previous_w, dt_s=dt_s, hold_s=hold_s)
    return np.array(held, dtype=np.float64) if held is power_w else held


def lenders(
    class_names: Sequence[str],
    workload_class: NDArray[np.int16],
    lender_classes: tuple[str, ...] | None,
) -> BoolArray | None:
    """Per GPU, whether it may lend: its workload class (`workload_class`, codes into
    `class_names`) is one of `lender_classes`. None where every GPU may (`lender_classes` None).
    """
    if lender_classes is None:
        return None
    table = np.fromiter((name in lender_classes for name in class_names), np.bool_)
    if table.size == 0:
        return np.zeros(workload_class.shape, np.bool_)
    # A code outside the table (a class named after the table was taken) is not a lender.
    known = (workload_class >= 0) & (workload_class < table.size)
    result: BoolArray = table[np.where(known, workload_class, 0)] & known
    return result
