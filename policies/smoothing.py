"""Anti-chatter: caps rise at a limited rate, and small changes are not issued.

A cap that moves every tick by a few watts costs commands and wakes every agent for nothing; a
cap that jumps up hands a surge to the breaker before the telemetry shows it. Both rules only
ever keep a cap lower, or keep a cut unissued where every group above still fits, so neither
breaks a limit.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.capping import REL_TOL
from policies.decision import CappingSettings
from policies.plan import CappingPlan
from policies.workspace import DecisionWorkspace

FloatArray = NDArray[np.float64]

#: A kept cap this share or more below its GPU's tier floor is short of it: the raise onto the
#: floor is issued however small (a few watts at a low cap are a few percent of speed).
FLOOR_SHORT_FRAC = 1e-3


def smooth(
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
    tier_floor_w: FloatArray | None = None,
    out: FloatArray | None = None,
    workspace: DecisionWorkspace | None = None,
) -> tuple[FloatArray, tuple[FloatArray, ...] | None]:
    """The caps after the raise rate limit and the deadband, and their group sums when the
    deadband check had to compute them (else None). Units: W.

    Raises are limited to `raise_rate_w_per_s` and skipped under the deadband (both only leave
    caps lower, which is always safe). A decrease under the deadband is skipped only where every
    group above the GPU still fits with the old cap kept; elsewhere the cut is applied exactly.
    Previous caps are first clamped into [`min_w`, `max_w`], so a cap from outside a model's
    range is never kept. A raise that brings a cap short of its tier floor (`tier_floor_w`, the
    floor the fill kept) onto it is issued however small: kept under the deadband, a cap a few
    watts under a tolerant tier's floor (a low cap, below the voltage knee, where power buys
    speed almost linearly) would hold its GPU below its floor tick after tick. The decision
    reports the group sums as its budget, so handing them back spares a second pass.
    Temporaries live in `workspace` (a fresh one when None).
    """
    buffers = (
        DecisionWorkspace(plan.topology.n_gpus) if workspace is None else workspace
    ).smoothing
    previous = np.maximum(previous_w, min_w, out=buffers.previous)
    np.minimum(previous, max_w, out=previous)
    # min(target, previous + rate * dt) is the rate-limited raise, and the target itself
    # whenever the target is not a raise.
    ceiling = np.add(previous, settings.raise_rate_w_per_s * dt_s, out=buffers.ceiling)
    cap = np.minimum(target_w, ceiling, out=buffers.limited)
    change = np.subtract(cap, previous, out=ceiling)
    kept_cut = np.less(change, 0.0, out=buffers.kept_cut)
    np.abs(change, out=change)
    small = np.less(change, settings.deadband_w, out=buffers.small)
    np.logical_and(kept_cut, small, out=kept_cut)
    if tier_floor_w is not None:
        # previous < floor (1 - frac) <= target: short of a floor the fill keeps, found as
        # min(floor (1 - frac) - previous, target - floor (1 - frac) + eps) > 0. |change| is
        # dead once `small` is made, so its buffer holds the threshold.
        short_of = np.multiply(tier_floor_w, 1.0 - FLOOR_SHORT_FRAC, out=change)
        gap = np.subtract(target_w, short_of, out=buffers.gap)
        gap += REL_TOL
        np.subtract(short_of, previous, out=short_of)
        np.minimum(short_of, gap, out=short_of)
        short = np.greater(short_of, 0.0, out=buffers.short)
        np.logical_and(small, np.logical_not(short, out=short), out=small)
    # previous where small, else cap. Both are finite, so multiplying by the mask and its
    # complement and adding selects exactly; np.where is several times slower on a mask this
    # irregular.
    kept = np.multiply(previous, small, out=previous)
    out = np.multiply(cap, np.logical_not(small, out=small), out=out)
    np.add(out, kept, out=out)
    if not kept_cut.any():
        return out, None
    used = plan.group_use(out)
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
