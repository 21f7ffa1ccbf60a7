"""One place every grid-event source reports to, and the DR limit the daemon's tick reads.

`GridEvents` keeps the live events (mirrored in the `EventStore`), a short history of site power
for baselines, and per-event compliance counters for metrics. All times come from the caller, so
the same object runs under the daemon's wall clock and a simulator's clock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from controller.grid.config import DemandResponseSection, OptType
from controller.grid.sources import scheduled_event
from controller.grid.store import EventStore
from policies.dr import DrBudget, DrEvent, baseline_w, lock_baselines, site_budget
from policies.dr_flex import FlexOutcome, flex_limit, gpu_floor_w

FloatArray = NDArray[np.float64]

#: Site-power samples kept for baselines (one per tick: over an hour at 1 s ticks).
HISTORY_SAMPLES = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class FlexInputs:
    """What the Flex check needs from the last decision. Units: W."""

    demand_w: FloatArray
    tier: NDArray[np.int8]
    min_cap_w: FloatArray
    overhead_w: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DrTick:
    """This tick's DR outcome: the limit for `Limits.site_limit_w` and why. Units: W."""

    limit_w: float
    budget: DrBudget
    flex: FlexOutcome | None
    gpu_floor_w: FloatArray | None

    @property
    def shortfall_w(self) -> float:
        return 0.0 if self.flex is None else self.flex.shortfall_w


@dataclass(slots=True)
class _Compliance:
    hold_s: float = 0.0
    ok_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.ok_s / self.hold_s if self.hold_s > 0 else 1.0


class GridEvents:
    """Live DR events: apply, cancel, tick. Not thread-safe: the daemon calls it from its loop."""

    def __init__(
        self, *, section: DemandResponseSection, store: EventStore, tick_s: float = 1.0
    ) -> None:
        self.section = section
        self.tick_s = tick_s
        self.store = store
        self.events: dict[str, DrEvent] = {e.event_id: e for e in store.events()}
        self.notes: dict[str, str] = {e.event_id: n for e, n in store.all()}
        self._t = np.full(HISTORY_SAMPLES, np.nan)
        self._p = np.full(HISTORY_SAMPLES, np.nan)
        self._n = 0
        self._last_power: tuple[float, float] | None = None
        self.compliance: dict[str, _Compliance] = {}

    # ---------------------------------------------------------------- sources
    def load_schedule(self, now_s: float) -> None:
        """Upsert the policy file's events; a changed one becomes a new modification."""
        for spec in self.section.events:
            new = scheduled_event(spec, self.section)
            old = self.events.get(new.event_id)
            if old is not None and _same_terms(old, new):
                continue
            if old is not None:
                new = dataclasses.replace(new, modification=old.modification + 1)
            self.apply(new, now_s)

    def apply(self, incoming: DrEvent, now_s: float) -> tuple[OptType, str]:
        """A new or modified event. Returns the opt decision and its reason ('' when none)."""
        old = self.events.get(incoming.event_id)
        if old is not None and incoming.modification <= old.modification:
            return ("optIn" if old.opted_in else "optOut"), self.notes.get(old.event_id, "")
        opt, reason = self._decide(incoming)
        event = dataclasses.replace(incoming, opted_in=opt == "optIn")
        if old is not None:
            event = old.revise(event, now_s)
        self._save(event, reason)
        return opt, reason

    def cancel(self, event_id: str, now_s: float) -> bool:
        """Cancel an event; recovery starts from the cut in force. False when unknown."""
        old = self.events.get(event_id)
        if old is None:
            return False
        if old.cancelled_s is None:
            self._save(old.cancel(now_s), self.notes.get(event_id) or "cancelled")
        return True

    def _decide(self, event: DrEvent) -> tuple[OptType, str]:
        frac = event.reduction_frac
        if frac is not None and frac > self.section.max_reduction_frac:
            if self.section.grid_first:
                return "optIn", ""
            return "optOut", (
                f"asks {frac:.0%} of baseline, over the policy's "
                f"max_reduction_frac {self.section.max_reduction_frac:.0%}"
            )
        return "optIn", ""

    def _save(self, event: DrEvent, note: str | None = None) -> None:
        self.events[event.event_id] = event
        if note is not None:
            self.notes[event.event_id] = note
        self.store.put(event, note)

    # ---------------------------------------------------------------- tick
    def record_power(self, now_s: float, site_power_w: float) -> None:
        """One measured site-power sample (for baselines, compliance and OpenADR reports)."""
        if not math.isfinite(site_power_w):
            return
        i = self._n % HISTORY_SAMPLES
        self._t[i], self._p[i] = now_s, site_power_w
        self._n += 1
        self._last_power = (now_s, site_power_w)

    @property
    def last_power_w(self) -> float | None:
        return None if self._last_power is None else self._last_power[1]

    def baseline_estimate_w(self, now_s: float) -> float | None:
        return baseline_w(self._t, self._p, until_s=now_s, window_s=self.section.baseline_window_s)

    def tick(self, now_s: float, flex: FlexInputs | None = None) -> DrTick:
        """The DR limit now: lock baselines, take the deepest ramped cut, apply Flex policy."""
        live = [e for e in self.events.values() if not e.is_over(now_s)]
        locked = lock_baselines(live, now_s, self.baseline_estimate_w(now_s))
        for before, after in zip(live, locked, strict=True):
            if after is not before:
                self._save(after)
        budget = site_budget(self.events.values(), now_s)
        self._count_compliance(now_s)
        if not budget.active or flex is None:
            return DrTick(limit_w=budget.limit_w, budget=budget, flex=None, gpu_floor_w=None)
        outcome = flex_limit(
            budget.limit_w,
            demand_w=flex.demand_w,
            tier=flex.tier,
            min_cap_w=flex.min_cap_w,
            overhead_w=flex.overhead_w,
            tolerances=self.section.flex_tolerances,
            grid_first=self.section.grid_first,
        )
        floors = gpu_floor_w(flex.demand_w, flex.tier, flex.min_cap_w, self.section.flex_tolerances)
        if outcome.reason and budget.event_id is not None:
            self.notes[budget.event_id] = outcome.reason
        return DrTick(limit_w=outcome.limit_w, budget=budget, flex=outcome, gpu_floor_w=floors)

    def _count_compliance(self, now_s: float) -> None:
        """Time-weighted share of each hold within 1 % of its target, from the last sample."""
        if self._last_power is None:
            return
        sample_s, power_w = self._last_power
        dt_s = self.tick_s
        for event in self.events.values():
            if event.baseline_w is None or not event.opted_in:
                continue
            if not event.start_s <= sample_s < event.hold_end_s or now_s - sample_s > dt_s * 5:
                continue
            c = self.compliance.setdefault(event.event_id, _Compliance())
            c.hold_s += dt_s
            if power_w <= event.target_w(event.baseline_w) * 1.01:
                c.ok_s += dt_s

    def active(self, now_s: float) -> list[DrEvent]:
        return [e for e in self.events.values() if not e.is_over(now_s)]


def _same_terms(a: DrEvent, b: DrEvent) -> bool:
    keys = ("start_s", "duration_s", "ramp_s", "recovery_s", "reduction_frac", "limit_w")
    return all(getattr(a, k) == getattr(b, k) for k in keys)
