"""The site power the allocation may use this tick: limits, a softer target, ramps, a margin."""

from __future__ import annotations

import numpy as np

from policies.decision import CappingSettings, DecisionState, Limits
from policies.topology import Topology


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
