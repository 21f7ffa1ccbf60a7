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
    out: FloatArray | None = None,
    workspace: DecisionWorkspace | None = None,
) -> tuple[FloatArray, tuple[FloatArray, ...] | None]:
    """The caps after the raise rate limit and the deadband, and their group sums when the
    deadband check had to compute them (else None). Units: W.

    Raises are limited to `raise_rate_w_per_s` and skipped under the deadband (both only leave
    caps lower, which is always safe). A decrease under the deadband is skipped only where every
    group above the GPU still fits with the old cap kept; elsewhere the cut is applied exactly.
    Previous caps are first clamped into [`min_w`, `max_w`], so a cap from outside a model's
    range is never kept. The decision reports the group sums as its budget, so handing them back
    spares a second pass. Temporaries live in `workspace` (a fresh one when None).
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
