"""The site limit over time: contract steps from the scenario and demand-response events.

Grid events stay data (the scenario's `limits.steps` and `grid.dr_events`); this module only
evaluates them. Demand response goes through `policies.dr`, the same code the daemon runs, so a
scenario exercises the production ramp, baseline and recovery logic.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from policies.dr import DrEvent, lock_baselines, reduction_for_simple_level, site_budget
from simulator.scenario import Scenario

#: Window of site power averaged into a DR event's baseline (a pre-event mean). Units: s.
BASELINE_WINDOW_S = 900.0


class SiteLimits:
    """Contract limit and DR limit at any time, fed with measured site power for baselines."""

    def __init__(self, scenario: Scenario, *, base_limit_w: float, full_power_w: float) -> None:
        self.base_limit_w = base_limit_w
        steps = sorted(scenario.limits.steps, key=lambda s: s.at_s)
        self.step_at_s = np.array([s.at_s for s in steps])
        self.step_limit_w = np.array(
            [
                s.site_limit_w
                if s.site_limit_w is not None
                else full_power_w * (s.site_limit_frac or 1.0)
                for s in steps
            ]
        )
        self.events: tuple[DrEvent, ...] = tuple(
            DrEvent(
                event_id=f"scenario-{i}",
                source="scenario",
                notified_s=max(0.0, e.start_s - max(e.notification_s, e.ramp_s)),
                start_s=e.start_s,
                duration_s=e.duration_s,
                ramp_s=e.ramp_s,
                recovery_s=e.recovery_s,
                reduction_frac=(
                    None
                    if e.limit_kw is not None
                    else (
                        e.reduction_frac
                        if e.reduction_frac is not None
                        else reduction_for_simple_level(e.level)
                    )
                ),
                limit_w=None if e.limit_kw is None else e.limit_kw * 1000.0,
            )
            for i, e in enumerate(scenario.grid.dr_events)
        )
        self._window: deque[float] = deque(
            maxlen=max(1, round(BASELINE_WINDOW_S / scenario.tick_s))
        )
        self.dr_limit_w = math.inf
        self._estimate: float | None = None
        self.dr_event: str | None = None

    def contract_w(self, now_s: float) -> float:
        """The contract (or maintenance) limit in force at `now_s`. Units: W."""
        k = int(np.searchsorted(self.step_at_s, now_s, side="right")) - 1
        return self.base_limit_w if k < 0 else float(self.step_limit_w[k])

    def observe(self, now_s: float, site_power_w: float) -> None:
        """Record measured site power (for baselines) and update the DR limit at `now_s`."""
        if not self.events:
            return
        estimate = sum(self._window) / len(self._window) if self._window else None
        self._estimate = estimate
        self.events = lock_baselines(self.events, now_s, estimate)
        budget = site_budget(self.events, now_s)
        self.dr_limit_w = budget.limit_w
        self.dr_event = budget.event_id
        if not budget.active:
            self._window.append(site_power_w)

    def limit_w(self, now_s: float) -> float:
        """The lowest of contract and DR limits. Units: W."""
        return min(self.contract_w(now_s), self.dr_limit_w)

    def planned_limit_w(self, now_s: float, horizon_s: float) -> float:
        """The lowest limit in force from `now_s` to `now_s + horizon_s`. Units: W.

        Contract steps and DR ramps are scheduled, so the controller is handed the limit as it
        will be once its caps have landed (decision period plus actuation lag); handed the limit
        of `now_s`, caps chasing a falling DR ramp arrive a lag late and the site overshoots.
        """
        ahead = now_s + max(horizon_s, 0.0)
        limit = min(self.limit_w(now_s), self.contract_w(ahead))
        if self.events:
            # An event whose ramp begins within the horizon is locked with today's baseline
            # estimate, as it will be when the ramp starts.
            planned = lock_baselines(self.events, ahead, self._estimate)
            limit = min(limit, site_budget(planned, ahead).limit_w)
        return limit

    def step_times_s(self) -> list[float]:
        return [float(t) for t in self.step_at_s]
