"""Carbon- and price-aware budgets for flexible work: run deferrable jobs in clean, cheap hours.

Flex 2-3 work (fine-tuning, sweeps, batch jobs) owes a daily amount of work, not a speed. Given a
forecast of the grid signal (marginal carbon intensity in lbs or kg CO2/MWh, or a price in
$/MWh: the policy only needs "higher is worse"), each job's speed is planned slot by slot to
minimise sum(signal x power) subject to
- the job's daily work target: the mean planned speed over what is left of the day covers the
  work still owed, re-planned every slot from the measured progress, so a job that fell behind
  gets its budget back at once;
- its tier's tolerated slowdown: speed never goes below `1 - tolerance` (Flex 0/1/2/3 tolerate
  0/10/25/50 % by default, as in `policies.dr_flex`).

With power rising as speed^gamma (gamma > 1: the Zeus sweeps, NSDI 2023, show 0.95 of throughput
at 0.8 of power and ~0.86 at 0.63, i.e. gamma about 3), the optimum is
`speed = clip((lambda / signal)^(1 / (gamma - 1)), 1 - tolerance, 1)`, with lambda set by
bisection so the mean speed meets the target. A flat signal gives a flat speed: the carbon-blind
plan that spreads the same work evenly.

The cap that carries a planned speed is steered by the job's measured progress
(`track_power_frac`): the speed a cap yields depends on the job's mix of compute and
communication, which no fixed curve knows. A job measured slower than its tolerance gets its
power back at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from policies.decision import N_TIERS
from policies.dr_flex import DEFAULT_TOLERANCES, check_tolerances
from policies.errors import PolicyError

FloatArray = NDArray[np.float64]

#: Exponent of power in speed used for planning (see the module docstring).
DEFAULT_GAMMA = 3.0
#: Speed kept above a tier's tolerance, so measurement noise never crosses it. Units: fraction.
SPEED_GUARD = 0.03
#: Bisection steps on log(lambda): 60 halvings of a 1e12-wide bracket reach 1e-6 relative.
_BISECT_STEPS = 60


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


def plan_speed(
    signal: ArrayLike, *, target_frac: float, min_speed: float, gamma: float = DEFAULT_GAMMA
) -> FloatArray:
    """Per-slot speed in [min_speed, 1] whose mean is `target_frac`, cheapest under `signal`.

    Slots are equally long. When the target is out of reach (above 1) every slot runs flat out;
    when it is below `min_speed` every slot runs at `min_speed` (the tolerance binds, not the
    target).
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
    # Only relative costs matter; keep them positive so a zero or negative price still ranks.
    rel = cost - cost.min()
    rel = (rel + max(float(rel.max()), 1.0) * 1e-3) / max(float(rel.max()), 1.0)
    expo = 1.0 / (gamma - 1.0)
    lo, hi = -30.0, 30.0  # log(lambda) bracket: speeds from all-min to all-one
    speed = np.ones(cost.size)
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        speed = np.clip(np.exp(mid * expo) / rel**expo, min_speed, 1.0)
        if float(speed.mean()) < target_frac:
            lo = mid
        else:
            hi = mid
    final: FloatArray = np.clip(np.exp(hi * expo) / rel**expo, min_speed, 1.0)
    return final


def job_speed_now(
    forecast: ArrayLike,
    *,
    owed_s: float,
    slot_s: float,
    tolerance: float,
    settings: CarbonSettings,
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
        remaining, target_frac=target, min_speed=1.0 - tolerance, gamma=settings.gamma
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
