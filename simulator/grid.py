"""The site limit over time: contract steps from the scenario and demand-response events.

Grid events stay data (the scenario's `limits.steps` and `grid.dr_events`); this module only
evaluates them. Demand response goes through `policies.dr`, the same code the daemon runs, so a
scenario exercises the production ramp, baseline and recovery logic.

Two views, kept apart so the simulator tells no future: `SiteLimits` is the truth compliance is
measured against; `LimitKnowledge` is what the controller knows, learned when a real one would
learn it. A contract step reaches it `notice_s` before it applies (0, the default, is unannounced:
it learns the new limit when it is already in force); a demand-response event at its notification
time, after which it may plan its ramp from the event's announced terms; the DR baseline comes
from the site power it measured, through `policies.dr.session.DrSession` as in the daemon.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from policies.dr.events import DrEvent, lock_baselines, reduction_for_simple_level, site_budget
from policies.dr.session import DrSession
from simulator.scenario import Scenario

#: Window of site power averaged into a DR event's baseline (a pre-event mean). Units: s.
BASELINE_WINDOW_S = 900.0


class SiteLimits:
    """Contract limit and DR limit at any time, fed with measured site power for baselines."""

    def __init__(self, scenario: Scenario, *, base_limit_w: float, full_power_w: float) -> None:
        self.base_limit_w = base_limit_w
        steps = sorted(scenario.limits.steps, key=lambda s: s.at_s)
        self.step_at_s = np.array([s.at_s for s in steps])
        self.step_notice_s = np.array([s.notice_s for s in steps])
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

    def step_times_s(self) -> list[float]:
        return [float(t) for t in self.step_at_s]


class LimitKnowledge:
    """The site limit as the controller knows it (module doc). Units: s, W.

    Fed once per decision with the site power the controller measured (`record`), asked for the
    limit to budget against (`limit_w`). Planning ahead is allowed only over what has been
    announced: the lowest known limit over `[now, now + horizon]`, so caps that land a decision
    period and an actuation lag later already fit an announced step or ramp.
    """

    def __init__(self, truth: SiteLimits, *, baseline_window_s: float = BASELINE_WINDOW_S) -> None:
        self.base_limit_w = truth.base_limit_w
        self._step_at_s = truth.step_at_s
        self._step_known_s = truth.step_at_s - truth.step_notice_s
        self._step_limit_w = truth.step_limit_w
        #: Events as scheduled (unlocked), each learned at its `notified_s`.
        self._scheduled = truth.events
        self.session = DrSession(baseline_window_s=baseline_window_s)
        #: Learned events by id, with the baselines the session locked.
        self.events: dict[str, DrEvent] = {}
        self.dr_limit_w = math.inf

    def record(self, sample_s: float, site_power_w: float) -> None:
        """One measured site-power sample (taken at `sample_s`) for DR baselines."""
        self.session.record(sample_s, site_power_w)

    def contract_w(self, now_s: float, horizon_s: float = 0.0) -> float:
        """The lowest contract limit known at `now_s` over `[now, now + horizon]`. Units: W."""
        in_force = self._step_at_s <= now_s
        k = int(np.flatnonzero(in_force)[-1]) if in_force.any() else -1
        limit = self.base_limit_w if k < 0 else float(self._step_limit_w[k])
        ahead = (
            ~in_force
            & (self._step_known_s <= now_s)
            & (self._step_at_s <= now_s + max(horizon_s, 0.0))
        )
        if ahead.any():
            limit = min(limit, float(self._step_limit_w[ahead].min()))
        return limit

    def limit_w(self, now_s: float, horizon_s: float = 0.0) -> float:
        """The limit to budget against at `now_s`: contract and learned DR events. Units: W."""
        for event in self._scheduled:
            if event.event_id not in self.events and event.notified_s <= now_s:
                self.events[event.event_id] = event
        limit = self.contract_w(now_s, horizon_s)
        if not self.events:
            return limit
        tick = self.session.step(tuple(self.events.values()), now_s)
        self.events = {e.event_id: e for e in tick.events}
        self.dr_limit_w = tick.limit_w
        limit = min(limit, tick.limit_w)
        if horizon_s > 0:
            # The announced ramp, planned: an event whose ramp begins within the horizon is
            # locked (for the plan only) with today's baseline estimate.
            ahead = now_s + horizon_s
            planned = lock_baselines(tick.events, ahead, self.session.baseline_estimate_w(now_s))
            limit = min(limit, site_budget(planned, ahead).limit_w)
        return limit
