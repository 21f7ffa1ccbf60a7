"""The one over-limit tolerance every compliance figure of the simulator uses."""

from __future__ import annotations

#: Relative excess below which a level (a breaker, the site, the facility meter) counts as at
#: its limit, not over it: float rounding of a sum of caps exactly at the limit and the last
#: 1e-5 of a limiter settling onto a new cap (0.01 %, a twentieth of a revenue meter's 0.2 %
#: accuracy class). `seconds_over_limit` and `max_overshoot_pct` both count against it.
OVER_TOL = 1e-4


def is_over(power_w: float, limit_w: float) -> bool:
    """True when `power_w` exceeds `limit_w` by more than the tolerance. Units: W."""
    return power_w > limit_w * (1.0 + OVER_TOL)
