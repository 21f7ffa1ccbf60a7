"""How well an event was delivered, computed from recorded time series.

Pure functions, so the daemon (from its history), the simulator (from a closed-loop run) and
tests compute the same figures. The `dr` list of `rheostat simulate --json` is
`[report.as_dict() for report in ...]`.

Definitions (documented in the README's demand-response section):
- the hold runs from the event's start to its end (or cancellation);
- compliance is the share of the hold, weighted by time, in which site power is at most 1 % above
  the grid's target (drawing less than asked delivers more, which is compliant);
- `target_reached_s` is the first time from the start (0 if already there) at which site power
  is within that 1 % and stays there for the following `settle_s`; None if never;
- `shortfall_kw_max` is the largest excess of site power over the target during the hold;
- `throughput_retained` is, per Flex tier, delivered over unconstrained work from the ramp's
  start to the end of recovery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from policies.dr.events import DrEvent
from policies.errors import PolicyError
from policies.tiers import N_TIERS

FloatArray = NDArray[np.float64]

#: Power within this fraction above the target counts as on target.
DEFAULT_TOLERANCE_FRAC = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class EventReport:
    """One event's delivery. Units in the names; fractions in [0, 1]."""

    event_id: str
    baseline_w: float
    target_w: float
    hold_s: float
    target_reached_s: float | None
    compliance: float
    shortfall_kw_max: float
    mean_delivered_reduction_w: float
    throughput_retained: dict[int, float] = field(default_factory=dict)
    fleet_throughput_retained: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The `dr` entry of `rheostat simulate --json` (tier keys as strings, JSON objects)."""
        return {
            "event_id": self.event_id,
            "target_reached_s": self.target_reached_s,
            "compliance": self.compliance,
            "shortfall_kw_max": self.shortfall_kw_max,
            "throughput_retained": {str(k): v for k, v in self.throughput_retained.items()},
            "fleet_throughput_retained": self.fleet_throughput_retained,
            "baseline_kw": self.baseline_w / 1e3,
            "target_kw": self.target_w / 1e3,
            "hold_s": self.hold_s,
            "mean_delivered_reduction_kw": self.mean_delivered_reduction_w / 1e3,
        }


def _weights_s(times_s: FloatArray) -> FloatArray:
    """Each sample's share of time: the gap to the next sample (the last repeats the previous)."""
    if times_s.size == 0:
        return times_s.copy()
    if times_s.size == 1:
        return np.ones(1)
    gaps = np.diff(times_s)
    if np.any(gaps <= 0):
        raise PolicyError("sample times must increase strictly")
    return np.append(gaps, gaps[-1])


def event_report(
    event: DrEvent,
    times_s: ArrayLike,
    site_power_w: ArrayLike,
    *,
    tier_work: ArrayLike | None = None,
    tier_work_unconstrained: ArrayLike | None = None,
    tolerance_frac: float = DEFAULT_TOLERANCE_FRAC,
    settle_s: float = 0.0,
) -> EventReport:
    """Summarise one event from samples of site power (and optionally per-tier work rates).

    `tier_work` and `tier_work_unconstrained` are (samples x N_TIERS) rates of useful work (any
    unit, e.g. GPU-equivalents of throughput) with and without the cut.
    """
    if event.baseline_w is None:
        raise PolicyError(f"event {event.event_id} has no baseline: it never started")
    t = np.asarray(times_s, dtype=np.float64)
    p = np.asarray(site_power_w, dtype=np.float64)
    if t.ndim != 1 or p.shape != t.shape:
        raise PolicyError("times and site power must be 1-D and of one length")
    w = _weights_s(t)
    target = event.target_w(event.baseline_w)
    ok = p <= target * (1.0 + tolerance_frac)
    hold = (t >= event.start_s) & (t < event.hold_end_s)
    hold_s = float(w[hold].sum())
    compliance = float(w[hold & ok].sum() / hold_s) if hold_s > 0 else 0.0
    excess = np.maximum(p - target, 0.0)
    shortfall_kw = float(excess[hold].max() / 1e3) if hold.any() else 0.0
    delivered = float(((event.baseline_w - p) * w)[hold].sum() / hold_s) if hold_s > 0 else 0.0

    reached: float | None = None
    window = (t >= event.ramp_start_s) & (t < event.hold_end_s)
    idx = np.flatnonzero(window)
    if idx.size:
        bad = np.flatnonzero(window & ~ok)
        candidates = idx[ok[idx]]
        pos = np.searchsorted(bad, candidates, side="right")
        next_bad_s = np.full(candidates.shape, np.inf)
        has_bad = pos < bad.size
        next_bad_s[has_bad] = t[bad[pos[has_bad]]]
        settled = candidates[next_bad_s - t[candidates] >= settle_s]
        if settled.size:
            reached = max(float(t[settled[0]] - event.start_s), 0.0)

    retained: dict[int, float] = {}
    fleet: float | None = None
    if tier_work is not None and tier_work_unconstrained is not None:
        got = np.asarray(tier_work, dtype=np.float64)
        want = np.asarray(tier_work_unconstrained, dtype=np.float64)
        if got.shape != (t.size, N_TIERS) or want.shape != got.shape:
            raise PolicyError(f"tier work must be (samples, {N_TIERS})")
        span = (t >= event.ramp_start_s) & (t < event.hold_end_s + event.recovery_s)
        got_sum = (got[span] * w[span, None]).sum(axis=0)
        want_sum = (want[span] * w[span, None]).sum(axis=0)
        retained = {
            k: float(min(got_sum[k] / want_sum[k], 1.0)) for k in range(N_TIERS) if want_sum[k] > 0
        }
        if want_sum.sum() > 0:
            fleet = float(min(got_sum.sum() / want_sum.sum(), 1.0))
    return EventReport(
        event_id=event.event_id,
        baseline_w=event.baseline_w,
        target_w=target,
        hold_s=hold_s,
        target_reached_s=reached,
        compliance=compliance,
        shortfall_kw_max=shortfall_kw,
        mean_delivered_reduction_w=delivered,
        throughput_retained=retained,
        fleet_throughput_retained=fleet,
    )


def dr_entries(
    events: Sequence[DrEvent],
    times_s: ArrayLike,
    site_power_w: ArrayLike,
    *,
    tier_work: ArrayLike | None = None,
    tier_work_unconstrained: ArrayLike | None = None,
    tolerance_frac: float = DEFAULT_TOLERANCE_FRAC,
) -> list[dict[str, Any]]:
    """The `dr` list of `rheostat simulate --json`: one entry per event that started cutting.

    Events that never locked a baseline (opted out, cancelled before their ramp, or beyond the
    end of the run) have nothing to report and are left out.
    """
    return [
        event_report(
            event,
            times_s,
            site_power_w,
            tier_work=tier_work,
            tier_work_unconstrained=tier_work_unconstrained,
            tolerance_frac=tolerance_frac,
        ).as_dict()
        for event in events
        if event.baseline_w is not None and event.opted_in
    ]
