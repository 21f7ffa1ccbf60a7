"""Grid demand response as pure functions: events, baselines and the ramped site budget.

A demand-response event asks the site to draw less than its baseline for a while. Its effect on
the decision core is one number per tick, the DR limit, which the caller folds into
`Limits.site_limit_w` (the lowest of contract, DR and facility budgets). The limit follows the
event's life: it ramps down from the baseline to the target (before the start when the notice
allows, at once when the event arrives late), holds, then ramps back up over the recovery period.
It never steps up: a cancellation or a shallower modification starts the recovery ramp from the
cut in force, so the grid never sees the site's load jump back.

Every event is expressed as a cut depth in W below its baseline; overlapping events combine by
the deepest cut (the lowest limit). Nothing here reads a clock: times are seconds on the caller's
clock (Unix time in the daemon, simulated time in the simulator).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray

from policies.errors import PolicyError

FloatArray = NDArray[np.float64]

#: OpenADR `SIMPLE` signal levels -> fraction of baseline to shed (the issue's defaults).
DEFAULT_SIMPLE_LEVELS: dict[int, float] = {0: 0.0, 1: 0.10, 2: 0.25, 3: 0.50}


class EventStatus(StrEnum):
    """Where an event is in its life at a given time."""

    PENDING = "pending"  # notified, its ramp has not begun
    RAMPING = "ramping"  # the limit is moving from baseline down to the target
    ACTIVE = "active"  # holding the target
    RECOVERING = "recovering"  # the limit is moving back up to the baseline
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # cancelled before it ever cut anything
    OPTED_OUT = "opted_out"


@dataclass(frozen=True, slots=True, kw_only=True)
class DrEvent:
    """One demand-response event as the site honours it. Units: s (one clock) and W.

    The target is exactly one of `reduction_frac` (shed this fraction of the baseline) or
    `limit_w` (draw at most this much). `ramp_s` is the lead before `start_s` over which the cut
    may ramp in (OpenADR's ramp-up period); `recovery_s` is how long the return from the full cut
    to the baseline takes, and must be positive so recovery is never a step. `baseline_w` is
    locked when the ramp begins (see `lock_baselines`) and stored with the event, so a restart
    keeps the same target. `carry_cut_w`/`carry_from_s` hold the cut that was in force when this
    version replaced an earlier one: it decays along the recovery ramp instead of vanishing.
    """

    event_id: str
    source: str
    notified_s: float
    start_s: float
    duration_s: float
    ramp_s: float = 0.0
    recovery_s: float = 300.0
    reduction_frac: float | None = None
    limit_w: float | None = None
    modification: int = 0
    cancelled_s: float | None = None
    opted_in: bool = True
    baseline_w: float | None = None
    carry_cut_w: float = 0.0
    carry_from_s: float = -math.inf

    def __post_init__(self) -> None:
        if not self.event_id:
            raise PolicyError("a demand-response event needs an id")
        if (self.reduction_frac is None) == (self.limit_w is None):
            raise PolicyError(f"event {self.event_id}: give exactly one of reduction_frac, limit_w")
        if self.reduction_frac is not None and not 0.0 <= self.reduction_frac < 1.0:
            raise PolicyError(f"event {self.event_id}: reduction_frac must be in [0, 1)")
        if self.limit_w is not None and not (math.isfinite(self.limit_w) and self.limit_w > 0):
            raise PolicyError(f"event {self.event_id}: limit_w must be positive and finite")
        for name in ("notified_s", "start_s", "duration_s", "ramp_s", "recovery_s"):
            if not math.isfinite(getattr(self, name)):
                raise PolicyError(f"event {self.event_id}: {name} must be finite")
        if self.duration_s <= 0 or self.ramp_s < 0:
            raise PolicyError(f"event {self.event_id}: duration must be > 0 and ramp >= 0")
        if self.recovery_s <= 0:
            raise PolicyError(f"event {self.event_id}: recovery_s must be > 0 (no step up)")
        if self.baseline_w is not None and not (
            math.isfinite(self.baseline_w) and self.baseline_w > 0
        ):
            raise PolicyError(f"event {self.event_id}: baseline_w must be positive and finite")

    @property
    def ramp_start_s(self) -> float:
        """When the cut starts moving in: the ramp lead before the start, or on arrival if late."""
        return max(self.start_s - self.ramp_s, self.notified_s)

    @property
    def end_s(self) -> float:
        """Scheduled end of the hold (the recovery ramp starts here unless cancelled earlier)."""
        return self.start_s + self.duration_s

    @property
    def hold_end_s(self) -> float:
        """When the recovery actually starts: the scheduled end or the cancellation."""
        if self.cancelled_s is None:
            return self.end_s
        return min(self.end_s, self.cancelled_s)

    def target_w(self, baseline_w: float) -> float:
        """The power to hold during the event. Units: W."""
        if self.limit_w is not None:
            return self.limit_w
        assert self.reduction_frac is not None
        return baseline_w * (1.0 - self.reduction_frac)

    def full_cut_w(self, baseline_w: float) -> float:
        """Depth of the held cut below the baseline (0 when the target is above it). Units: W."""
        return max(baseline_w - self.target_w(baseline_w), 0.0)

    def depth(self, times_s: ArrayLike) -> FloatArray:
        """Fraction of the full cut in force at each time, in [0, 1]: ramp, hold, recovery."""
        t = np.asarray(times_s, dtype=np.float64)
        if not self.opted_in:
            return np.zeros_like(t)
        begin, start = self.ramp_start_s, max(self.start_s, self.ramp_start_s)
        stop = self.hold_end_s
        if stop <= begin:  # cancelled (or shortened) before the ramp began: never cut
            return np.zeros_like(t)
        ramp_len = start - begin
        if ramp_len > 0:
            ramp = np.clip((t - begin) / ramp_len, 0.0, 1.0)
            depth_at_stop = min(max((stop - begin) / ramp_len, 0.0), 1.0)
        else:
            ramp = (t >= begin).astype(np.float64)
            depth_at_stop = 1.0
        recovering = np.clip(depth_at_stop - (t - stop) / self.recovery_s, 0.0, 1.0)
        return np.where(t < stop, ramp, recovering)

    def cut_w(self, times_s: ArrayLike, baseline_w: float) -> FloatArray:
        """Cut below the baseline at each time, with any carried cut decaying. Units: W."""
        t = np.asarray(times_s, dtype=np.float64)
        cut = self.depth(t) * self.full_cut_w(baseline_w)
        if self.carry_cut_w > 0:
            rate_w_per_s = max(self.full_cut_w(baseline_w), self.carry_cut_w) / self.recovery_s
            carried = np.where(
                t >= self.carry_from_s,
                np.maximum(self.carry_cut_w - (t - self.carry_from_s) * rate_w_per_s, 0.0),
                0.0,
            )
            cut = np.maximum(cut, carried)
        return cut

    def status(self, now_s: float) -> EventStatus:
        if not self.opted_in:
            return EventStatus.OPTED_OUT
        carrying = self.carry_cut_w > 0 and (
            self.carry_from_s <= now_s < self.carry_from_s + self.recovery_s
        )
        begin, stop = self.ramp_start_s, self.hold_end_s
        if stop <= begin:
            return EventStatus.RECOVERING if carrying else EventStatus.CANCELLED
        if now_s < begin:
            return EventStatus.RECOVERING if carrying else EventStatus.PENDING
        if now_s < stop:
            return EventStatus.RAMPING if now_s < self.start_s else EventStatus.ACTIVE
        if carrying or float(self.depth(now_s)) > 0:
            return EventStatus.RECOVERING
        if self.cancelled_s is not None and self.cancelled_s < self.end_s:
            return EventStatus.CANCELLED
        return EventStatus.COMPLETED

    def is_over(self, now_s: float) -> bool:
        """True once the event can no longer affect the limit."""
        return self.status(now_s) in {
            EventStatus.COMPLETED,
            EventStatus.CANCELLED,
            EventStatus.OPTED_OUT,
        }

    def cancel(self, now_s: float) -> DrEvent:
        """This event cancelled at `now_s`: recovery starts from the cut in force."""
        return replace(
            self,
            cancelled_s=now_s if self.cancelled_s is None else min(now_s, self.cancelled_s),
            modification=self.modification + 1,
        )

    def revise(self, new: DrEvent, now_s: float) -> DrEvent:
        """`new` replacing this version at `now_s`, carrying the cut in force so it can't step up.

        The locked baseline is kept unless the new version brings its own.
        """
        baseline = self.baseline_w
        carried = float(self.cut_w(now_s, baseline)) if baseline is not None else 0.0
        return replace(
            new,
            baseline_w=new.baseline_w if new.baseline_w is not None else baseline,
            carry_cut_w=carried,
            carry_from_s=now_s,
        )


def reduction_for_simple_level(level: float, levels: dict[int, float] | None = None) -> float:
    """Fraction of baseline to shed for an OpenADR `SIMPLE` level (0-3), by policy."""
    table = DEFAULT_SIMPLE_LEVELS if levels is None else levels
    key = round(level)
    if key != level or key not in table:
        raise PolicyError(f"SIMPLE level {level} is not one of {sorted(table)}")
    return table[key]


def baseline_w(
    times_s: ArrayLike, site_power_w: ArrayLike, *, until_s: float, window_s: float
) -> float | None:
    """What the site would have drawn: the mean site power over [until - window, until).

    A pre-event average is the simplest baseline utilities accept for loads without a strong
    daily shape; AI training and inference fleets qualify over the minutes-to-hours windows an
    event looks back. None when the window holds no sample (the caller keeps its estimate).
    Units: s and W.
    """
    t = np.asarray(times_s, dtype=np.float64)
    p = np.asarray(site_power_w, dtype=np.float64)
    if t.shape != p.shape:
        raise PolicyError("times and powers must have one shape")
    inside = (t >= until_s - window_s) & (t < until_s) & np.isfinite(p)
    if not inside.any():
        return None
    return float(p[inside].mean())


def lock_baselines(
    events: Sequence[DrEvent], now_s: float, estimate_w: float | None
) -> tuple[DrEvent, ...]:
    """Events whose ramp has begun get a baseline, once; later ticks keep it.

    An event starting while another one already cuts takes that event's baseline (the live
    average would count the other cut as the site's normal draw); otherwise it takes the
    caller's pre-event estimate. Without an estimate an event stays unlocked (and cuts nothing
    yet), which only happens before the first telemetry.
    """
    locked = [e.baseline_w for e in events if e.baseline_w is not None and not e.is_over(now_s)]
    out = []
    for event in events:
        if event.baseline_w is None and event.opted_in and event.ramp_start_s <= now_s:
            chosen = max(locked) if locked else estimate_w
            if chosen is not None and chosen > 0:
                event = replace(event, baseline_w=chosen)  # noqa: PLW2901 - rebinding on purpose
        out.append(event)
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class DrBudget:
    """The DR limit at one time and the event that sets it. Units: W (inf when no event cuts)."""

    limit_w: float
    target_w: float
    baseline_w: float
    event_id: str | None

    @property
    def active(self) -> bool:
        return self.event_id is not None


NO_DR = DrBudget(limit_w=math.inf, target_w=math.inf, baseline_w=math.nan, event_id=None)


def site_budget(events: Iterable[DrEvent], now_s: float) -> DrBudget:
    """The ramped DR limit at `now_s`: the deepest cut of the events in force wins.

    Only events with a locked baseline can cut. Each event's limit is continuous in time, so
    their minimum is too: the limit ramps down, holds and ramps up without a step up.
    """
    best = NO_DR
    for event in events:
        if event.baseline_w is None:
            continue
        cut = float(event.cut_w(now_s, event.baseline_w))
        if cut <= 0:
            continue
        limit = event.baseline_w - cut
        if limit < best.limit_w:
            best = DrBudget(
                limit_w=limit,
                target_w=event.target_w(event.baseline_w),
                baseline_w=event.baseline_w,
                event_id=event.event_id,
            )
    return best
