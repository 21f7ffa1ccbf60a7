"""Flex tiers under a demand-response cut: can the target be met within each tier's tolerance?

Each Flex tier tolerates a slowdown (Flex 0/1/2/3 = 0/10/25/50 % by default, the tiers of the
2025 field demonstration cited in the issue). A GPU's floor is the power below which its work
would slow more than its tier allows. We read a tolerance as a power fraction of the GPU's
unconstrained demand: throughput is concave in power above ~40 % of TDP (Zeus power-limit sweeps,
NSDI 2023: 0.95 of throughput at 80 % of TDP, 0.83-0.89 at 60-67 %), so cutting power by x costs at
most x of throughput there, and the floor is conservative. The capping core spends the most
tolerant tier first; this module decides what limit the core is given and reports the shortfall
when the grid asks for more than the tolerances allow and the policy is not `grid_first`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from policies.errors import PolicyError
from policies.tiers import DEFAULT_FLEX_TOLERANCES, N_TIERS

FloatArray = NDArray[np.float64]

#: Slowdown each Flex tier tolerates, as a fraction (tier index -> tolerance).
DEFAULT_TOLERANCES: tuple[float, ...] = DEFAULT_FLEX_TOLERANCES


def check_tolerances(tolerances: tuple[float, ...]) -> FloatArray:
    tol = np.asarray(tolerances, dtype=np.float64)
    if tol.shape != (N_TIERS,) or np.any(~((tol >= 0) & (tol < 1))):
        raise PolicyError(f"need {N_TIERS} tolerances in [0, 1)")
    if np.any(np.diff(tol) < 0):
        raise PolicyError("tolerances must not fall with the tier (Flex 3 tolerates the most)")
    return tol


def gpu_floor_w(
    demand_w: ArrayLike,
    tier: ArrayLike,
    min_cap_w: ArrayLike,
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
) -> FloatArray:
    """Per-GPU power floor within its tier's tolerance. Units: W.

    (1 - tolerance) x demand, but never below the GPU's minimum cap (a cap cannot go lower) and
    never above its demand (a GPU drawing less than its minimum cap gives nothing).
    """
    demand = np.asarray(demand_w, dtype=np.float64)
    tiers = np.asarray(tier, dtype=np.int64)
    min_cap = np.asarray(min_cap_w, dtype=np.float64)
    if tiers.shape != demand.shape or min_cap.shape != demand.shape:
        raise PolicyError("demand, tier and min cap must have one length")
    if tiers.size and (tiers.min() < 0 or tiers.max() >= N_TIERS):
        raise PolicyError(f"tiers must be in 0..{N_TIERS - 1}")
    tol = check_tolerances(tolerances)
    floor = np.maximum((1.0 - tol[tiers]) * demand, min_cap)
    return np.minimum(floor, demand)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlexOutcome:
    """The DR limit handed to the core and what it costs. Units: W.

    `limit_w` is the requested limit, raised to what the tolerances allow when the policy is not
    `grid_first` (and to the hard minimum when even min caps cannot meet it). `shortfall_w` is how
    far above the request the site will draw; `reason` says why, for the opt-in response, logs
    and metrics ('' when none). `tier_floor_w` is the per-tier sum of floors.
    """

    limit_w: float
    requested_w: float
    achievable_w: float
    hard_min_w: float
    shortfall_w: float
    reason: str
    tier_floor_w: FloatArray

    @property
    def feasible(self) -> bool:
        return self.shortfall_w <= 0


def flex_limit(
    requested_w: float,
    *,
    demand_w: ArrayLike,
    tier: ArrayLike,
    min_cap_w: ArrayLike,
    overhead_w: float,
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES,
    grid_first: bool = False,
    floors_w: FloatArray | None = None,
) -> FlexOutcome:
    """Decide the DR limit given Flex tolerances. Units: W.

    `demand_w` is each GPU's unconstrained demand, `overhead_w` the site's non-GPU draw (which
    no cap touches). Within tolerances the site can go down to overhead + the sum of floors;
    with `grid_first` it goes down to overhead + min caps (beyond which nothing is possible).
    `floors_w` passes floors already computed with `gpu_floor_w` for the same inputs.
    """
    demand = np.asarray(demand_w, dtype=np.float64)
    tiers = np.asarray(tier, dtype=np.int64)
    floors = gpu_floor_w(demand, tiers, min_cap_w, tolerances) if floors_w is None else floors_w
    min_cap = np.asarray(min_cap_w, dtype=np.float64)
    tier_floor = np.bincount(tiers, weights=floors, minlength=N_TIERS).astype(np.float64)
    achievable = overhead_w + float(floors.sum())
    hard_min = overhead_w + float(np.minimum(min_cap, demand).sum())
    if not math.isfinite(requested_w) or requested_w >= achievable:
        return FlexOutcome(
            limit_w=requested_w,
            requested_w=requested_w,
            achievable_w=achievable,
            hard_min_w=hard_min,
            shortfall_w=0.0,
            reason="",
            tier_floor_w=tier_floor,
        )
    if grid_first:
        limit = max(requested_w, hard_min)
        reason = "grid_first: target below every GPU's minimum cap" if limit > requested_w else ""
    else:
        limit = achievable
        reason = (
            f"target {requested_w / 1e3:.1f} kW is below the {achievable / 1e3:.1f} kW the Flex "
            "tolerances allow (every tier at its floor, Flex 0 protected); delivering that"
        )
    return FlexOutcome(
        limit_w=limit,
        requested_w=requested_w,
        achievable_w=achievable,
        hard_min_w=hard_min,
        shortfall_w=max(limit - requested_w, 0.0),
        reason=reason,
        tier_floor_w=tier_floor,
    )
