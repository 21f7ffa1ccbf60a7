"""A demand-response campaign: many random grid events on one site, each run around itself.

A season of events on a real site is months of time; what decides whether an event was met is
the few minutes around its start. Each event therefore runs as its own short closed-loop run of
the site: the pre-event stretch the baseline averages over (at least `PRE_EVENT_S` of the site
running before the ramp, after the controller's warm-up), the notice, which overlaps it (the
controller learns of the event at its notification time, not before: `simulator.grid`), the ramp
and the first `check_s` seconds of the hold. The rest of a hold of up to ten hours is a steady
state the scoreboard's DR scenarios (`phoenix`) already cover, and is not simulated.

An event is on time when site power is at or under its target (within the reports' 1 %,
`policies.dr.report`) no later than `ON_TIME_S` after the event's start and stays there for the
rest of the checked hold. Each event runs with its own seed (workload bursts, sensor noise), so
the site is in a different state at each start.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from policies.dr.report import event_report
from simulator import loop
from simulator.scenario import Scenario

#: Ranges events are drawn from (uniform): the share of the baseline cut, the notice, the hold.
CUT_FRAC = (0.10, 0.40)
NOTICE_S = (0.0, 900.0)
HOLD_S = (600.0, 36_000.0)
#: An event must be at its target this soon after its start. Units: s.
ON_TIME_S = 30.0
#: Seconds the site runs before an event's ramp (after the controller's warm-up), so the
#: baseline has a pre-event stretch to average: the warm-up and these 300 s, where the daemon's
#: window is 900 s. The site's load is steady at that scale (training iterations of seconds,
#: inference that moves over hours), so a shorter window moves the baseline by its noise only.
PRE_EVENT_S = 300.0
#: Longest ramp-in the site takes before the start when the notice allows it (as `phoenix`).
RAMP_S = 120.0
#: Seconds of each hold simulated and checked after the start.
CHECK_S = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignEvent:
    """One random event. Units: s; `reduction_frac` is the share of the baseline to shed."""

    index: int
    reduction_frac: float
    notice_s: float
    hold_s: float
    seed: int

    @property
    def ramp_s(self) -> float:
        """The ramp-in lead: the notice, up to `RAMP_S` (zero notice: a step at the start)."""
        return min(self.notice_s, RAMP_S)


def random_events(n: int, seed: int) -> list[CampaignEvent]:
    """`n` events with cuts, notices and holds drawn uniformly from the module's ranges."""
    if n <= 0:
        raise ValueError("need at least one event")
    rng = np.random.default_rng(seed)
    cuts = rng.uniform(*CUT_FRAC, n)
    notices = rng.uniform(*NOTICE_S, n)
    holds = rng.uniform(*HOLD_S, n)
    seeds = rng.integers(0, 2**31 - 1, n)
    return [
        CampaignEvent(
            index=i,
            reduction_frac=round(float(cuts[i]), 4),
            notice_s=round(float(notices[i]), 1),
            hold_s=round(float(holds[i]), 1),
            seed=int(seeds[i]),
        )
        for i in range(n)
    ]


def event_scenario(site: Scenario, event: CampaignEvent, *, check_s: float = CHECK_S) -> Scenario:
    """The site around one event: at least `PRE_EVENT_S` before its ramp, the notice, the first
    `check_s` seconds of its hold; the site's own events and contract steps left out."""
    start_s = max(PRE_EVENT_S + event.ramp_s, event.notice_s)
    dr = {
        "start_s": start_s,
        "notification_s": event.notice_s,
        "ramp_s": event.ramp_s,
        "duration_s": event.hold_s,
        "reduction_frac": event.reduction_frac,
    }
    doc = site.model_dump()
    doc |= {
        "name": f"{site.name}/event-{event.index}",
        "seed": event.seed,
        "duration_s": start_s + min(check_s, event.hold_s),
    }
    doc["grid"]["dr_events"] = [dr]
    doc["limits"]["steps"] = []
    return Scenario.model_validate(doc)


def run_event(
    site: Scenario,
    event: CampaignEvent,
    *,
    controller: str = "rheostat",
    check_s: float = CHECK_S,
) -> dict[str, Any]:
    """One event's run and its delivery: when the target was reached and held, and whether the
    site kept its breakers."""
    scenario = event_scenario(site, event, check_s=check_s)
    result = loop.run(scenario, controller=controller)
    [dr] = result.limits.events
    if dr.baseline_w is None:
        raise RuntimeError(f"event {event.index} never locked a baseline")
    report = event_report(dr, result.series.t_s, result.series.site_power_w, settle_s=math.inf)
    over = result.compliance.seconds_over
    levels = result.cluster.topology.levels
    reached = report.target_reached_s
    return asdict(event) | {
        "ramp_s": event.ramp_s,
        "baseline_kw": round(report.baseline_w / 1e3, 3),
        "target_kw": round(report.target_w / 1e3, 3),
        "reached_s": reached,
        "on_time": reached is not None and reached <= ON_TIME_S,
        "compliance": round(report.compliance, 4),
        "shortfall_kw_max": round(report.shortfall_kw_max, 3),
        "breaker_trips": len(result.cluster.trips),
        "breaker_over_s": round(sum(over.get(lv.name, 0.0) for lv in levels[:-1]), 3),
        "wall_s": round(result.wall_s, 3),
    }


def run_campaign(
    site: Scenario,
    events: list[CampaignEvent],
    *,
    controller: str = "rheostat",
    check_s: float = CHECK_S,
    jobs: int = 1,
) -> Iterator[dict[str, Any]]:
    """Each event's delivery, in order (`run_event`); `jobs` runs that many at once, each in
    its own process (the events are independent runs)."""
    runner = partial(_run_one, site, controller=controller, check_s=check_s)
    if jobs <= 1:
        yield from map(runner, events)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(runner, events)


def _run_one(
    site: Scenario, event: CampaignEvent, *, controller: str, check_s: float
) -> dict[str, Any]:
    """`run_event` with the simulator's trip log kept off stdout (a worker's stdout is the
    benchmark's)."""
    with contextlib.redirect_stdout(sys.stderr):
        return run_event(site, event, controller=controller, check_s=check_s)


def campaign_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The share of events on time and the figures behind it."""
    reached = np.array(
        [r["reached_s"] for r in results if r["reached_s"] is not None], dtype=np.float64
    )
    on_time = sum(1 for r in results if r["on_time"])
    return {
        "events": len(results),
        "on_time": on_time,
        "on_time_frac": round(on_time / len(results), 4) if results else None,
        "never_reached": sum(1 for r in results if r["reached_s"] is None),
        "reached_s_p50": float(np.percentile(reached, 50)) if reached.size else None,
        "reached_s_p99": float(np.percentile(reached, 99)) if reached.size else None,
        "reached_s_max": float(reached.max()) if reached.size else None,
        "min_compliance": min((r["compliance"] for r in results), default=None),
        "breaker_trips": sum(r["breaker_trips"] for r in results),
        "breaker_over_s": round(sum(r["breaker_over_s"] for r in results), 3),
    }
