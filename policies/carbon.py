"""Carbon- and price-aware budgets for flexible work: run deferrable jobs in clean, cheap hours.

Flex 2-3 work (fine-tuning, sweeps, batch jobs) owes a daily amount of work, not a speed. Given a
forecast of the grid signal (marginal carbon intensity in lbs or kg CO2/MWh, or a price in
$/MWh: the policy only needs "higher is worse"), each job's speed is planned slot by slot to
minimise sum(signal x power) subject to
- the job's daily work target: the mean planned speed over what is left of the day covers the
  work still owed, re-planned every slot from the measured progress, so a job that fell behind
  gets its budget back at once;
- its tier's tolerated slowdown: speed never goes below `1 - tolerance` (Flex 0/1/2/3 tolerate
  0/10/25/50 % by default, as in `policies.dr.flex`).

Power is the job's *dynamic* power against its speed (what the job adds above its GPUs'
idle draw and the servers' constant load, which are paid whether it runs or not), given as a
`PowerCurve`: the simulator passes the curve of its own physics (clock, voltage knee, the
compute/communication mix), and without one a power law speed^gamma stands in (gamma about 3: the
Zeus sweeps, NSDI 2023, show 0.95 of throughput at 0.8 of power and ~0.86 at 0.63). The optimum
per slot is where the curve's marginal power equals lambda / signal, clipped to
[1 - tolerance, 1], with lambda set by bisection so the mean speed meets the target. A flat signal
gives a flat speed: the plan that spreads the same work evenly.

Slowdown, for a job with a daily target, is measured against full speed while the job still owes
work: `1 - speed`. A job whose target is done may stop (it has nothing left to do today); it is
never paused while it owes work, since a pause is a slowdown of 100 %.

The cap that carries a planned speed is steered by the job's measured progress
(`track_power_frac`): the speed a cap yields depends on the job's mix of compute and
communication, which no fixed curve knows. A job measured slower than its tolerance gets its
power back at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from policies.dr.flex import DEFAULT_TOLERANCES, check_tolerances
from policies.errors import PolicyError
from policies.tiers import N_TIERS

FloatArray = NDArray[np.float64]

#: Exponent of power in speed used for planning (see the module docstring).
DEFAULT_GAMMA = 3.0
#: Speed kept above a tier's tolerance, so measurement noise never crosses it. Units: fraction.
SPEED_GUARD = 0.03
#: Bisection steps on log(lambda): 60 halvings of a 60-wide bracket reach 1e-16 in log.
_BISECT_STEPS = 60
#: Relative width over which the planner's inverse of marginal power ramps between two vertices.
_RAMP = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class CarbonSettings:
    """Which tiers shift and how. Units: fractions, s.

    `shift_tiers` are the tiers whose budget follows the signal (Flex 2-3 by default);
    `target_margin_frac` plans a little more work than owed so noise in measured progress never
    leaves a job short at the end of the day.
    """

    shift_tiers: tuple[int, ...] = (2, 3)
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES
    gamma: float = DEFAULT_GAMMA
    target_margin_frac: float = 0.01

    def __post_init__(self) -> None:
        check_tolerances(self.tolerances)
        if any(not 0 <= t < N_TIERS for t in self.shift_tiers):
            raise PolicyError(f"shift tiers must be in 0..{N_TIERS - 1}")
        if self.gamma <= 1.0:
            raise PolicyError("gamma must be > 1 (power convex in speed)")
        if not 0 <= self.target_margin_frac < 0.5:
            raise PolicyError("target_margin_frac must lie in [0, 0.5)")


@dataclass(frozen=True, slots=True)
class PowerCurve:
    """A job's dynamic power against its speed, both fractions of full speed's (convex hull).

    `speed` rises to 1 and `power` is the lower convex envelope of the table it came from, so
    the marginal power `slope` (per unit of speed, between consecutive points) only rises: a mix
    of two speeds is never cheaper than the speed in between.
    """

    speed: FloatArray
    power: FloatArray
    slope: FloatArray
    knots: FloatArray
    knot_speed: FloatArray

    @classmethod
    def from_table(cls, speed: ArrayLike, power: ArrayLike) -> PowerCurve:
        """From sampled (speed, power) pairs, normalised so full speed draws 1."""
        v = np.asarray(speed, dtype=np.float64)
        p = np.asarray(power, dtype=np.float64)
        if v.ndim != 1 or v.shape != p.shape or v.size < 2:
            raise PolicyError("a power curve needs two or more (speed, power) pairs")
        if not (np.all(np.isfinite(v)) and np.all(np.isfinite(p))):
            raise PolicyError("power curve must be finite")
        order = np.argsort(v)
        v, p = v[order], p[order]
        if v[0] < 0 or abs(v[-1] - 1.0) > 1e-6 or p[-1] <= 0 or np.any(np.diff(v) <= 0):
            raise PolicyError("power curve speeds must be distinct, in [0, 1], reaching 1")
        hull: list[int] = []  # lower convex hull, monotone chain over a few hundred points
        for k in range(v.size):
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                cross = (v[b] - v[a]) * (p[k] - p[a]) - (p[b] - p[a]) * (v[k] - v[a])
                if cross > 0:
                    break
                hull.pop()
            hull.append(k)
        hv, hp = v[hull], p[hull] / p[-1]
        slope = np.maximum(np.diff(hp) / np.diff(hv), 1e-9)
        # Strictly rising by more than the ramp width below, so the inverse is a function.
        slope = slope * (1.0 + 4.0 * _RAMP) ** np.arange(slope.size)
        # Marginal power -> speed: at each hull slope the speed ramps from one vertex to the next
        # over a relative width _RAMP (the set-valued inverse made continuous), then holds.
        knots = np.column_stack((slope, slope * (1.0 + _RAMP))).ravel()
        knot_speed = np.column_stack((hv[:-1], hv[1:])).ravel()
        return cls(hv, hp, slope, knots, knot_speed)

    @classmethod
    def power_law(cls, gamma: float = DEFAULT_GAMMA, n_points: int = 201) -> PowerCurve:
        """power = speed^gamma: the stand-in when the job's real curve is unknown."""
        if gamma <= 1.0:
            raise PolicyError("gamma must be > 1 (power convex in speed)")
        v = np.linspace(0.0, 1.0, n_points)
        return cls.from_table(v, v**gamma)

    def speed_at_marginal(self, marginal: FloatArray) -> FloatArray:
        """The speed whose marginal power is `marginal` (continuous, rising in it)."""
        out: FloatArray = np.interp(marginal, self.knots, self.knot_speed)
        return out

    def power_at(self, speed: ArrayLike) -> FloatArray:
        """Dynamic power (fraction of full speed's) at `speed`, on the convex envelope."""
        out: FloatArray = np.interp(np.asarray(speed, dtype=np.float64), self.speed, self.power)
        return out


@lru_cache(maxsize=8)
def _power_law(gamma: float) -> PowerCurve:
    return PowerCurve.power_law(gamma)


def plan_speed(
    signal: ArrayLike,
    *,
    target_frac: float,
    min_speed: float,
    gamma: float = DEFAULT_GAMMA,
    curve: PowerCurve | None = None,
) -> FloatArray:
    """Per-slot speed in [min_speed, 1] whose mean is `target_frac`, cheapest under `signal`.

    Slots are equally long; `curve` is the job's power against speed (a power law of exponent
    `gamma` without one). When the target is out of reach (above 1) every slot runs flat out;
    when it is below `min_speed` every slot runs at `min_speed` (the tolerance binds, not the
    target: the job then finishes early and stops).
    """
    cost = np.asarray(signal, dtype=np.float64)
    if cost.ndim != 1 or cost.size == 0:
        raise PolicyError("signal must be a non-empty 1-D array")
    if not np.all(np.isfinite(cost)):
        raise PolicyError("signal must be finite")
    if not 0.0 <= min_speed <= 1.0:
        raise PolicyError(f"min_speed must lie in [0, 1], got {min_speed}")
    if target_frac >= 1.0:
        return np.ones(cost.size)
    if target_frac <= min_speed:
        return np.full(cost.size, min_speed)
    pc = curve if curve is not None else _power_law(gamma)
    # Ratios of costs set the plan, so a positive signal is only scaled; one that reaches zero
    # or below (a price can) is shifted up to a thousandth of its range, so it still ranks.
    top = max(float(np.abs(cost).max()), 1e-12)
    floor = 1e-3 * max(float(cost.max() - cost.min()), top)
    rel = (cost if cost.min() >= floor else cost - cost.min() + floor) / top
    lo, hi = -30.0, 30.0  # log(lambda) bracket: speeds from all-min to all-one
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        speed = np.clip(pc.speed_at_marginal(np.exp(mid) / rel), min_speed, 1.0)
        if float(speed.mean()) < target_frac:
            lo = mid
        else:
            hi = mid
    final: FloatArray = np.clip(pc.speed_at_marginal(np.exp(hi) / rel), min_speed, 1.0)
    return final


def job_speed_now(
    forecast: ArrayLike,
    *,
    owed_s: float,
    slot_s: float,
    tolerance: float,
    settings: CarbonSettings,
    curve: PowerCurve | None = None,
) -> float:
    """Speed for the current slot of a job that still owes `owed_s` of full-speed work.

    `forecast` is the signal for this slot and every later one until the job's deadline (the
    day's end). Units: s (work in seconds of full-speed running), fraction (speed).
    """
    remaining = np.asarray(forecast, dtype=np.float64)
    if remaining.size == 0:
        return 1.0
    need = max(owed_s, 0.0) * (1.0 + settings.target_margin_frac)
    target = need / (remaining.size * slot_s)
    plan = plan_speed(
        remaining,
        target_frac=target,
        min_speed=1.0 - tolerance,
        gamma=settings.gamma,
        curve=curve,
    )
    return float(plan[0])


def track_power_frac(
    power_frac: ArrayLike,
    *,
    planned_speed: ArrayLike,
    measured_speed: ArrayLike,
    min_speed: ArrayLike,
    min_frac: ArrayLike,
    gamma: float = DEFAULT_GAMMA,
    gain: float = 0.5,
    guard: float = SPEED_GUARD,
) -> FloatArray:
    """Next cap fraction (of max cap) per job, steering its measured speed onto the plan.

    Speed is measured from progress (work done over the last interval against full speed), so it
    counts communication phases and whatever else the cap does not slow. Power moves by
    `(wanted / measured)^(gamma x gain)`: a damped step of the power-speed law. A job measured
    slower than its tolerance allows (plus `guard`) gets the full correction at once, and a plan
    of full speed lifts the cap to the max directly. Units: fractions.
    """
    frac = np.asarray(power_frac, dtype=np.float64)
    planned = np.asarray(planned_speed, dtype=np.float64)
    measured = np.maximum(np.asarray(measured_speed, dtype=np.float64), 1e-3)
    floor_speed = np.asarray(min_speed, dtype=np.float64) + guard
    want = np.maximum(planned, floor_speed)
    ratio = want / measured
    too_slow = measured < floor_speed
    step = np.where(too_slow, ratio**gamma, ratio ** (gamma * gain))
    out: FloatArray = np.clip(frac * step, np.asarray(min_frac, dtype=np.float64), 1.0)
    out = np.where(planned >= 1.0 - 1e-9, 1.0, out)
    return out


def per_tier_totals(
    gpu_power_w: ArrayLike,
    tier: ArrayLike,
    *,
    facility_w: float,
    intensity_kg_per_mwh: float,
    price_per_mwh: float,
    dt_s: float,
) -> tuple[FloatArray, FloatArray]:
    """Emissions (kg CO2) and energy cost per tier over `dt_s`, facility power split by GPU draw.

    Cooling, losses and server overhead follow the work that causes them, so each tier carries a
    share of facility power equal to its share of GPU power.
    """
    power = np.asarray(gpu_power_w, dtype=np.float64)
    tiers = np.asarray(tier, dtype=np.int64)
    by_tier = np.bincount(tiers, weights=power, minlength=N_TIERS)[:N_TIERS]
    total = float(by_tier.sum())
    share = by_tier / total if total > 0 else np.full(N_TIERS, 1.0 / N_TIERS)
    energy_mwh = facility_w * dt_s / 3.6e9
    co2: FloatArray = share * energy_mwh * intensity_kg_per_mwh
    cost: FloatArray = share * energy_mwh * price_per_mwh
    return co2, cost
