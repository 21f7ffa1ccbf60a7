"""The per-tick demand-response step shared by the daemon and the simulator's closed loop.

`DrSession` keeps what a DR step needs from the past (a ring of site-power samples for the
baseline) and the Flex policy; `step` takes the events and `now` and returns the DR limit for
`Limits.site_limit_w`, the per-GPU floors for `Limits.gpu_floor_w`, and the events with any
newly locked baselines (the caller persists those). No clock is read: times are arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from policies.dr.events import DrBudget, DrEvent, baseline_w, lock_baselines, site_budget
from policies.dr.flex import DEFAULT_TOLERANCES, FlexOutcome, flex_limit, gpu_floor_w

FloatArray = NDArray[np.float64]

#: Site-power samples kept for baselines (over an hour at one sample a second).
HISTORY_SAMPLES = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class FlexInputs:
    """What the Flex check needs from the last decision. Units: W.

    `demand_w` is each GPU's unconstrained demand (`Decision.demand_w`), `overhead_w` the site's
    non-GPU draw (site power minus GPU power).
    """

    demand_w: FloatArray
    tier: NDArray[np.int8]
    min_cap_w: FloatArray
    overhead_w: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DrTick:
    """One step's outcome: the limit for `Limits.site_limit_w` and why. Units: W."""

    limit_w: float
    budget: DrBudget
    flex: FlexOutcome | None
    gpu_floor_w: FloatArray | None
    events: tuple[DrEvent, ...]

    @property
    def shortfall_w(self) -> float:
        return 0.0 if self.flex is None else self.flex.shortfall_w

    @property
    def site_limit_w(self) -> float | None:
        """The limit as `Limits.site_limit_w` takes it (None when no event cuts)."""
        return self.limit_w if math.isfinite(self.limit_w) else None


@dataclass(eq=False, kw_only=True)
class DrSession:
    """Baseline history and Flex policy for successive DR steps (one per control tick).

    Floors are taken from the demand seen on the last step without a cut: once GPUs are capped
    their estimated demand follows their capped draw, and floors computed from it would ratchet
    down tick after tick, letting the cut grow past every tolerance. A GPU whose work shrinks
    during the event keeps its pre-event floor, which errs towards delivering less.
    """

    baseline_window_s: float = 900.0
    tolerances: tuple[float, ...] = DEFAULT_TOLERANCES
    grid_first: bool = False
    _t: FloatArray = field(default_factory=lambda: np.full(HISTORY_SAMPLES, np.nan))
    _p: FloatArray = field(default_factory=lambda: np.full(HISTORY_SAMPLES, np.nan))
    _n: int = 0
    last_power_w: float | None = None
    last_sample_s: float | None = None
    _reference_demand_w: FloatArray | None = None

    def record(self, now_s: float, site_power_w: float) -> None:
        """One measured site-power sample. Units: s, W. Non-finite samples are ignored."""
        if not math.isfinite(site_power_w):
            return
        i = self._n % HISTORY_SAMPLES
        self._t[i], self._p[i] = now_s, site_power_w
        self._n += 1
        self.last_power_w, self.last_sample_s = site_power_w, now_s

    def baseline_estimate_w(self, now_s: float) -> float | None:
        """The pre-event average over the window ending now (see `events.baseline_w`)."""
        return baseline_w(self._t, self._p, until_s=now_s, window_s=self.baseline_window_s)

    def step(
        self, events: Sequence[DrEvent], now_s: float, flex: FlexInputs | None = None
    ) -> DrTick:
        """Lock baselines of events whose ramp began, take the deepest cut, apply Flex policy."""
        locked = lock_baselines(events, now_s, self.baseline_estimate_w(now_s))
        budget = site_budget(locked, now_s)
        if flex is not None and (
            not budget.active
            or self._reference_demand_w is None
            or self._reference_demand_w.shape != flex.demand_w.shape
        ):
            self._reference_demand_w = flex.demand_w.copy()
        if not budget.active or flex is None or self._reference_demand_w is None:
            return DrTick(
                limit_w=budget.limit_w, budget=budget, flex=None, gpu_floor_w=None, events=locked
            )
        demand = self._reference_demand_w
        floors = gpu_floor_w(demand, flex.tier, flex.min_cap_w, self.tolerances)
        outcome = flex_limit(
            budget.limit_w,
            demand_w=demand,
            tier=flex.tier,
            min_cap_w=flex.min_cap_w,
            overhead_w=flex.overhead_w,
            tolerances=self.tolerances,
            grid_first=self.grid_first,
            floors_w=floors,
        )
        return DrTick(
            limit_w=outcome.limit_w, budget=budget, flex=outcome, gpu_floor_w=floors, events=locked
        )
