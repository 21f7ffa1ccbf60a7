"""Limit changes are learned when announced: announced ones are met on time, unannounced within
two decision periods (the controller learns the limit when it applies; caps land a period and an
actuation lag later). Overshoots are what the physics produced in those ticks."""

from __future__ import annotations

from typing import Any

from simulator.loop import run
from simulator.scenario import Scenario, load_scenario
from simulator.summary import summarize


def budget_step(notice_s: float) -> Scenario:
    doc = load_scenario("budget-step").shortened(700).model_dump()
    doc["limits"]["steps"][0]["notice_s"] = notice_s
    return Scenario.model_validate(doc)


def test_an_announced_step_is_never_exceeded() -> None:
    summary = summarize(run(budget_step(60.0)))
    assert summary["breaker_trips"] == 0
    assert summary["seconds_over_limit"]["site"] == 0.0
    assert summary["time_to_cap_s"] == [0.0]


def test_an_unannounced_step_is_under_the_new_limit_within_two_ticks() -> None:
    summary = summarize(run(budget_step(0.0)))
    assert summary["breaker_trips"] == 0
    assert summary["seconds_over_limit"]["rack"] == 0.0
    (to_cap,) = summary["time_to_cap_s"]
    assert 0.0 < to_cap <= 2.0
    assert summary["seconds_over_limit"]["site"] == to_cap
    # The fleet drew its old budget until the caps landed: ~0.9 / 0.63 of the new limit at most.
    assert 0.0 < summary["max_overshoot_pct"] < 0.9 / 0.63 * 100.0 - 100.0 + 1.0


def zero_notice_dr(**event: Any) -> Scenario:
    doc = load_scenario("phoenix").shortened(1500).model_dump()
    doc["grid"]["dr_events"] = [
        {"start_s": 1200, "duration_s": 600, "recovery_s": 300, "reduction_frac": 0.3} | event
    ]
    return Scenario.model_validate(doc)


def test_a_zero_notice_dr_cut_is_met_within_two_ticks() -> None:
    summary = summarize(run(zero_notice_dr()))
    assert summary["breaker_trips"] == 0
    [dr] = summary["dr"]
    assert 0.0 < dr["target_reached_s"] <= 2.0
    assert 0.0 < summary["seconds_over_limit"]["site"] <= 2.0


def test_a_notified_dr_cut_is_never_exceeded() -> None:
    summary = summarize(run(zero_notice_dr(notification_s=60)))
    [dr] = summary["dr"]
    assert dr["target_reached_s"] == 0.0
    assert summary["seconds_over_limit"]["site"] == 0.0
