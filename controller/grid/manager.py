"""One place every grid-event source reports to, and the DR limit the daemon's tick reads.

`GridEvents` keeps the live events (mirrored in the `EventStore`), a short history of site power
for baselines, and per-event compliance counters for metrics. All times come from the caller, so
the same object runs under the daemon's wall clock and a simulator's clock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from controller.config import DemandResponseSection
from controller.grid.sources import scheduled_event
from controller.grid.store import EventStore
from policies.dr.events import DrEvent
from policies.dr.session import DrSession, DrTick, FlexInputs
from policies.errors import ProtocolError

__all__ = ["DrTick", "FlexInputs", "GridEvents", "OptType"]

#: Shortfall reasons change with the fleet's demand; they reach the store at most this often.
NOTE_SAVE_PERIOD_S = 60.0

#: The answer to a grid event, as OpenADR 2.0b spells it.
OptType = Literal["optIn", "optOut"]


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
        #: Events that can no longer cut (checked once, then skipped until they change again),
        #: so years of history in the store cost nothing per tick.
        self._done: set[str] = set()
        self.session = DrSession(
            baseline_window_s=section.baseline_window_s,
            tolerances=section.flex_tolerances,
            grid_first=section.grid_first,
        )
        self.compliance: dict[str, _Compliance] = {}
        self._note_saved_s: dict[str, float] = {}

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
        """A new or modified event. Returns the opt decision and its reason ('' when none).

        Raises `ProtocolError` for a new event id while `max_events` are held and none of them
        is over: the table of events is bounded whatever the sources send.
        """
        old = self.events.get(incoming.event_id)
        if old is not None and incoming.modification <= old.modification:
            return ("optIn" if old.opted_in else "optOut"), self.notes.get(old.event_id, "")
        if old is None and len(self.events) >= self.section.max_events:
            self.forget_over(now_s)
            if len(self.events) >= self.section.max_events:
                raise ProtocolError(
                    f"{len(self.events)} events held (max_events); event refused",
                    reason="out_of_range",
                )
        opt, reason = self._decide(incoming)
        event = dataclasses.replace(incoming, opted_in=opt == "optIn")
        if old is not None:
            event = old.revise(event, now_s)
        self._save(event, reason)
        return opt, reason

    def forget_over(self, now_s: float) -> int:
        """Drop events that can no longer cut (memory and store); returns how many."""
        gone = [e.event_id for e in self.events.values() if e.is_over(now_s)]
        for event_id in gone:
            del self.events[event_id]
            self.notes.pop(event_id, None)
            self.compliance.pop(event_id, None)
            self._note_saved_s.pop(event_id, None)
            self._done.discard(event_id)
        if gone:
            self.store.prune(now_s)
        return len(gone)

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
        self._done.discard(event.event_id)
        if note is not None:
            self.notes[event.event_id] = note
        self.store.put(event, note)

    # ---------------------------------------------------------------- tick
    def record_power(self, now_s: float, site_power_w: float) -> None:
        """One measured site-power sample (for baselines, compliance and OpenADR reports)."""
        self.session.record(now_s, site_power_w)

    @property
    def last_power_w(self) -> float | None:
        return self.session.last_power_w

    def tick(self, now_s: float, flex: FlexInputs | None = None) -> DrTick:
        """The DR limit now: lock baselines, take the deepest ramped cut, apply Flex policy."""
        live = []
        for event_id, event in self.events.items():
            if event_id in self._done:
                continue
            if event.is_over(now_s):
                self._done.add(event_id)
            else:
                live.append(event)
        tick = self.session.step(live, now_s, flex)
        for before, after in zip(live, tick.events, strict=True):
            if after is not before:
                self._save(after)
        self._count_compliance(now_s)
        if tick.flex is not None and tick.flex.reason and tick.budget.event_id is not None:
            self._note(tick.budget.event_id, tick.flex.reason, now_s)
        return tick

    def _note(self, event_id: str, note: str, now_s: float) -> None:
        """Keep the shortfall reason; persist it when new, then at most once a minute."""
        if self.notes.get(event_id) == note:
            return
        self.notes[event_id] = note
        if now_s - self._note_saved_s.get(event_id, -math.inf) >= NOTE_SAVE_PERIOD_S:
            self._note_saved_s[event_id] = now_s
            self.store.put(self.events[event_id], note)

    def _count_compliance(self, now_s: float) -> None:
        """Time-weighted share of each hold within 1 % of its target, from the last sample."""
        sample_s, power_w = self.session.last_sample_s, self.session.last_power_w
        if sample_s is None or power_w is None:
            return
        dt_s = self.tick_s
        for event in self.events.values():
            if event.baseline_w is None or not event.opted_in or event.event_id in self._done:
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
