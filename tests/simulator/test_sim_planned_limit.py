"""The controller learns a limit when a real one would: no step or event before it is announced."""

from __future__ import annotations

from simulator.grid import LimitKnowledge, SiteLimits
from simulator.scenario import Scenario, load_scenario


def _budget_step(notice_s: float) -> Scenario:
    doc = load_scenario("budget-step").model_dump()
    doc["limits"]["steps"][0]["notice_s"] = notice_s
    return Scenario.model_validate(doc)


def test_an_unannounced_step_is_learned_when_it_applies() -> None:
    limits = SiteLimits(_budget_step(0.0), base_limit_w=100_000.0, full_power_w=100_000.0)
    known = LimitKnowledge(limits)
    at = float(limits.step_at_s[0])
    after = float(limits.step_limit_w[0])
    assert known.limit_w(at - 1.0, 30.0) == limits.limit_w(at - 1.0) > after
    assert known.limit_w(at, 30.0) == after == limits.limit_w(at)


def test_an_announced_step_is_planned_from_its_notice() -> None:
    limits = SiteLimits(_budget_step(60.0), base_limit_w=100_000.0, full_power_w=100_000.0)
    known = LimitKnowledge(limits)
    at = float(limits.step_at_s[0])
    after = float(limits.step_limit_w[0])
    assert known.limit_w(at - 61.0, 120.0) > after  # not yet told
    assert known.limit_w(at - 60.0, 2.0) > after  # told, but far enough off not to budget yet
    assert known.limit_w(at - 2.0, 2.0) == after  # caps landing at `at` already fit it
    assert limits.limit_w(at - 2.0) > after  # the truth: not yet in force


def _phoenix(notification_s: float, ramp_s: float) -> Scenario:
    doc = load_scenario("phoenix").model_dump()
    doc["grid"]["dr_events"][0].update(notification_s=notification_s, ramp_s=ramp_s)
    return Scenario.model_validate(doc)


def test_a_dr_event_is_planned_only_after_its_notification() -> None:
    scenario = _phoenix(600.0, 120.0)
    event = scenario.grid.dr_events[0]
    limits = SiteLimits(scenario, base_limit_w=1e9, full_power_w=1e9)
    known = LimitKnowledge(limits)
    for t in range(int(event.start_s) - 900, int(event.start_s) - 130):
        known.record(float(t), 100_000.0)
    now = event.start_s - event.ramp_s - 1.0
    assert known.limit_w(now, 0.0) == 1e9  # told, but the ramp has not begun
    planned = known.limit_w(now, 11.0)
    assert planned < 100_000.0  # the ramp toward a 25 % cut of the 100 kW baseline is planned


def test_a_zero_notice_event_is_unknown_until_it_starts() -> None:
    scenario = _phoenix(0.0, 0.0)
    event = scenario.grid.dr_events[0]
    limits = SiteLimits(scenario, base_limit_w=1e9, full_power_w=1e9)
    known = LimitKnowledge(limits)
    for t in range(int(event.start_s) - 900, int(event.start_s)):
        known.record(float(t), 100_000.0)
    assert known.limit_w(event.start_s - 1.0, 60.0) == 1e9
    assert known.events == {}
    assert known.limit_w(event.start_s, 60.0) == 75_000.0  # learned at the start: the full cut
