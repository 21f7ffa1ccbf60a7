"""A short demand-response campaign on the 72-GPU-rack site: events on time, breakers kept.

The full campaign is `rheostat bench dr-campaign --events 200` (docs/benchmarks-capacity-dr.md);
this runs a few random events and the two hardest corners (the deepest cut with no notice, and
with the longest notice) against the same target.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.dr_campaign import MIN_ON_TIME_FRAC, targets
from simulator.dr_campaign import (
    CUT_FRAC,
    HOLD_S,
    NOTICE_S,
    ON_TIME_S,
    PRE_EVENT_S,
    CampaignEvent,
    campaign_summary,
    event_scenario,
    random_events,
    run_campaign,
)
from simulator.scenario import load_scenario

CHECK_S = 60.0


def test_events_are_drawn_from_the_stated_ranges() -> None:
    events = random_events(500, seed=4)
    assert events == random_events(500, seed=4)
    assert events != random_events(500, seed=5)
    for value, (lo, hi) in (
        ([e.reduction_frac for e in events], CUT_FRAC),
        ([e.notice_s for e in events], NOTICE_S),
        ([e.hold_s for e in events], HOLD_S),
    ):
        assert lo <= min(value)
        assert max(value) <= hi
        assert max(value) - min(value) > 0.9 * (hi - lo)  # the whole range is drawn
    assert len({e.seed for e in events}) == len(events)


@pytest.mark.parametrize("notice_s", [0.0, 45.0, 900.0])
def test_an_event_runs_around_its_start(notice_s: float) -> None:
    site = load_scenario("gb200-nvl72")
    event = CampaignEvent(index=3, reduction_frac=0.3, notice_s=notice_s, hold_s=7200.0, seed=9)
    sc = event_scenario(site, event, check_s=CHECK_S)
    [dr] = sc.grid.dr_events
    assert dr.notification_s == notice_s
    assert dr.ramp_s == min(notice_s, 120.0)
    assert dr.start_s - dr.ramp_s >= PRE_EVENT_S
    assert dr.start_s - dr.notification_s >= 0.0
    assert sc.duration_s == dr.start_s + CHECK_S
    assert sc.seed == 9
    assert sc.topology == site.topology
    assert sc.workloads == site.workloads


@pytest.fixture(scope="module")
def campaign() -> list[dict[str, Any]]:
    site = load_scenario("gb200-nvl72")
    corners = [
        CampaignEvent(index=100, reduction_frac=0.40, notice_s=0.0, hold_s=600.0, seed=1),
        CampaignEvent(index=101, reduction_frac=0.40, notice_s=900.0, hold_s=36_000.0, seed=2),
    ]
    events = [*random_events(4, seed=1), *corners]
    return list(run_campaign(site, events, check_s=CHECK_S))


def test_campaign_events_are_on_time(campaign: list[dict[str, Any]]) -> None:
    summary = campaign_summary(campaign)
    late = [(e["index"], e["reached_s"]) for e in campaign if not e["on_time"]]
    assert summary["on_time_frac"] >= MIN_ON_TIME_FRAC, late
    assert targets(summary)["on_time_met"]
    for e in campaign:
        assert e["reached_s"] is not None
        assert e["reached_s"] <= ON_TIME_S
        assert e["target_kw"] == pytest.approx(
            e["baseline_kw"] * (1 - e["reduction_frac"]), abs=2e-3
        )


def test_campaign_keeps_the_breakers(campaign: list[dict[str, Any]]) -> None:
    summary = campaign_summary(campaign)
    assert summary["breaker_trips"] == 0
    assert summary["breaker_over_s"] == 0.0
    assert targets(summary)["breakers_met"]
