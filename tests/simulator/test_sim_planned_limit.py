"""The loop hands controllers the limit as it will be once their caps land."""

from __future__ import annotations

from simulator.grid import SiteLimits
from simulator.scenario import load_scenario


def test_planned_limit_sees_a_contract_step_coming() -> None:
    scenario = load_scenario("budget-step")
    limits = SiteLimits(scenario, base_limit_w=100_000.0, full_power_w=100_000.0)
    at = float(limits.step_at_s[0])
    after = float(limits.step_limit_w[0])
    assert limits.planned_limit_w(at - 5.0, 2.0) == limits.limit_w(at - 5.0)
    assert limits.planned_limit_w(at - 1.0, 2.0) == after
    assert limits.limit_w(at - 1.0) > after  # not yet in force, but already planned


def test_planned_limit_locks_a_dr_baseline_ahead_of_the_ramp() -> None:
    scenario = load_scenario("phoenix")
    event = scenario.grid.dr_events[0]
    limits = SiteLimits(scenario, base_limit_w=1e9, full_power_w=1e9)
    for t in range(int(event.start_s) - 900, int(event.start_s) - 200):
        limits.observe(float(t), 100_000.0)
    now = event.start_s - event.ramp_s - 1.0
    assert limits.limit_w(now) == 1e9
    planned = limits.planned_limit_w(now, event.ramp_s + 11.0)
    assert planned < 100_000.0  # the ramp toward a 25 % cut of the 100 kW baseline is planned
