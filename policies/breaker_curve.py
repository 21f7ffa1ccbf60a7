"""The breaker trip curve: how long an overload a rack or row breaker carries before it trips.

The simulator's breakers (`simulator.breakers`) integrate this curve tick by tick; the decision
core reads it to bound how far a worst case may overshoot a breaker for as long as the
controller needs to react (`policies.lending`). One curve serves both, so a bound the controller
trusts is the curve the simulated breakers trip on.

Trip-curve points (CALIBRATION.md): IEC 60898-1 no trip at 1.13 In for 1 h, trip within 1 h at
1.45 In and within 1-60 s at 2.55 In; UL 489 within 2 min at 2.0 In; magnetic (C curve) at
5-10 In in under 0.1 s. The curve below is a log-log interpolation through points inside those
windows. Load is power over the breaker's rating (not derated), which equals current over rated
current at a fixed voltage and power factor.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

#: Load (multiple of rating) -> seconds to trip from cold, inside the IEC/UL windows above.
TRIP_CURVE_LOAD: tuple[float, ...] = (1.13, 1.2, 1.45, 2.0, 2.55, 5.0)
TRIP_CURVE_S: tuple[float, ...] = (3600.0, 1800.0, 600.0, 90.0, 20.0, 2.0)
#: No trip at or below this load, ever (IEC 60898-1 conventional non-tripping current).
NO_TRIP_LOAD = 1.13
#: Instant (magnetic) trip at or above this load: the low end of a C curve.
MAGNETIC_LOAD = 5.0

_LOG_LOAD = np.log(np.asarray(TRIP_CURVE_LOAD))
_LOG_TIME = np.log(np.asarray(TRIP_CURVE_S))


def trip_time_s(load: FloatArray) -> FloatArray:
    """Seconds to trip from cold at a constant load (multiple of rating); inf at or below 1.13."""
    load = np.asarray(load, dtype=np.float64)
    safe = np.maximum(load, TRIP_CURVE_LOAD[0])
    t = np.exp(np.interp(np.log(safe), _LOG_LOAD, _LOG_TIME))
    t = np.where(load <= NO_TRIP_LOAD, np.inf, t)
    return np.where(load >= MAGNETIC_LOAD, 0.0, t)


def load_carried_for(seconds: float) -> float:
    """The highest load (multiple of rating) the curve carries for `seconds` from cold.

    The inverse of `trip_time_s` on the curve's falling part: at least the no-trip load (carried
    for ever), below the magnetic trip.
    """
    if not seconds > 0.0:
        return MAGNETIC_LOAD
    if seconds >= TRIP_CURVE_S[0]:
        return NO_TRIP_LOAD
    # Both logs fall together along the curve: interpolate load on reversed (rising) times.
    log_load = np.interp(np.log(seconds), _LOG_TIME[::-1], _LOG_LOAD[::-1])
    return float(min(np.exp(log_load), MAGNETIC_LOAD))
