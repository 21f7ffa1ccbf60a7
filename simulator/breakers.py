"""Rack PDU breakers: an inverse-time (thermal) trip curve with heat memory, and a magnetic trip.

Each breaker integrates `dt / trip_time(load)` while loaded above its no-trip threshold (Miner's
rule, the usual way to give a thermal element memory of earlier overloads) and trips when the sum
reaches 1; below the threshold the accumulated heat cools with a time constant. At or above the
magnetic threshold it trips within the tick. Load is rack power over the breaker's rating, which
equals current over rated current at a fixed voltage and power factor.

The trip curve itself is `policies.breaker_curve`, which the decision core reads too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.breaker_curve import (
    MAGNETIC_LOAD,
    NO_TRIP_LOAD,
    TRIP_CURVE_LOAD,
    TRIP_CURVE_S,
    trip_time_s,
)

FloatArray = NDArray[np.float64]

__all__ = [
    "COOLING_TAU_S",
    "MAGNETIC_LOAD",
    "NO_TRIP_LOAD",
    "TRIP_CURVE_LOAD",
    "TRIP_CURVE_S",
    "Breakers",
    "trip_time_s",
]

#: Cooling time constant of the thermal element (*estimate*). Units: s.
COOLING_TAU_S = 600.0


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
