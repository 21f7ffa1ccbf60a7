"""Rack PDU breakers: an inverse-time (thermal) trip curve with heat memory, and a magnetic trip.

Each breaker integrates `dt / trip_time(load)` while loaded above its no-trip threshold (Miner's
rule, the usual way to give a thermal element memory of earlier overloads) and trips when the sum
reaches 1; below the threshold the accumulated heat cools with a time constant. At or above the
magnetic threshold it trips within the tick. Load is rack power over the breaker's rating, which
equals current over rated current at a fixed voltage and power factor.

Trip-curve points (CALIBRATION.md): IEC 60898-1 no trip at 1.13 In for 1 h, trip within 1 h at
1.45 In and within 1-60 s at 2.55 In; UL 489 within 2 min at 2.0 In; magnetic (C curve) at
5-10 In in under 0.1 s. The curve below is a log-log interpolation through points inside those
windows.
"""

from __future__ import annotations

from dataclasses import dataclass

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
#: Cooling time constant of the thermal element (*estimate*). Units: s.
COOLING_TAU_S = 600.0

_LOG_LOAD = np.log(np.asarray(TRIP_CURVE_LOAD))
_LOG_TIME = np.log(np.asarray(TRIP_CURVE_S))


def trip_time_s(load: FloatArray) -> FloatArray:
    """Seconds to trip from cold at a constant load (multiple of rating); inf at or below 1.13."""
    load = np.asarray(load, dtype=np.float64)
    safe = np.maximum(load, TRIP_CURVE_LOAD[0])
    t = np.exp(np.interp(np.log(safe), _LOG_LOAD, _LOG_TIME))
    t = np.where(load <= NO_TRIP_LOAD, np.inf, t)
    return np.where(load >= MAGNETIC_LOAD, 0.0, t)


@dataclass(eq=False, kw_only=True)
class Breakers:
    """One breaker per rack. `rating_w` is the nameplate (not derated); `tripped` latches."""

    rating_w: FloatArray
    heat: FloatArray
    tripped: NDArray[np.bool_]
    trip_time_s: FloatArray

    @classmethod
    def create(cls, rating_w: FloatArray) -> Breakers:
        n = rating_w.size
        return cls(
            rating_w=np.asarray(rating_w, dtype=np.float64),
            heat=np.zeros(n),
            tripped=np.zeros(n, dtype=bool),
            trip_time_s=np.full(n, np.nan),
        )

    def step(self, rack_power_w: FloatArray, now_s: float, dt_s: float) -> NDArray[np.bool_]:
        """Integrate one tick of load; return the racks that tripped during it."""
        load = rack_power_w / self.rating_w
        over = load > NO_TRIP_LOAD
        if not over.any():  # the usual case: every element cools, nothing can trip
            self.heat *= np.exp(-dt_s / COOLING_TAU_S)
            return np.zeros(load.size, dtype=bool)
        t = trip_time_s(load)
        with np.errstate(divide="ignore"):
            gain = np.where(over, dt_s / t, 0.0)
        self.heat = np.where(over, self.heat + gain, self.heat * np.exp(-dt_s / COOLING_TAU_S))
        new = (self.heat >= 1.0) & ~self.tripped
        if new.any():
            self.tripped |= new
            self.trip_time_s[new] = now_s
        return new
