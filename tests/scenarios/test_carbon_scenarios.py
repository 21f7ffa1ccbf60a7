"""carbon-shift, cut to the dirty-to-clean turn of its day: less CO2 for the same daily work."""

from __future__ import annotations

from typing import Any

from simulator.carbon import blind_twin, even_twin
from simulator.loop import run
from simulator.oracle_run import oracle_available
from simulator.scenario import Scenario, load_scenario
from simulator.summary import summarize

DAY_START_S = 950_400.0  # the shipped scenario's day in the CAISO trace


def _turn_of_the_day() -> Scenario:
    """Six hours, four dirty then two clean (10:00-16:00 UTC), at a coarser tick.

    Racks report once a tick, so the stale timeout spans three of the coarser ticks: at the
    default 5 s every rack would be silent at every decision and the core would decide blind.
    """
    scenario = load_scenario("carbon-shift")
    grid = scenario.grid.model_copy(update={"carbon_start_s": DAY_START_S + 10 * 3600})
    controller = scenario.controller.model_copy(update={"stale_timeout_s": 30.0})
    return scenario.model_copy(
        update={"grid": grid, "tick_s": 10.0, "controller": controller}
    ).shortened(6 * 3600)


def _check_targets(targets: list[dict[str, Any]]) -> None:
    """Every daily target met; no job slower than its tier tolerates while it owed work."""
    assert {t["tier"] for t in targets} == {2, 3}
    for t in targets:
        assert t["met"], t
        assert 0.0 <= t["max_slowdown"] <= t["tolerance"], t
        assert t["stopped_at_s"] is not None, t  # done before the day's end, then stopped


def test_carbon_shift_cuts_co2_against_both_twins_for_the_same_work() -> None:
    scenario = _turn_of_the_day()
    reference = run(scenario, unlimited=True)
    aware = run(scenario, controller="rheostat")
    blind = run(blind_twin(scenario), controller="rheostat")
    even = run(even_twin(scenario), controller="rheostat")
    summary = summarize(aware, reference, blind=blind, even=even)
    # Blind twin: full speed through the dirty hours, done and idle in the clean ones.
    assert summary["co2_reduction_vs_blind"] > 0.10
    assert summary["co2_reduction_vs_even"] > 0.02
    assert summary["co2_kg"] < summarize(even)["co2_kg"] < summarize(blind)["co2_kg"]
    targets = summary["work_targets"]
    _check_targets(targets)
    for other in (blind, even):
        other_targets = summarize(other)["work_targets"]
        _check_targets(other_targets)
        # Same work every way: the reduction is not bought by doing less.
        for a, b in zip(targets, other_targets, strict=True):
            assert abs(a["done_s"] - b["done_s"]) <= 1e-3 * a["target_s"]
    blind_stop = {t["job"]: t["stopped_at_s"] for t in summarize(blind)["work_targets"]}
    aware_stop = {t["job"]: t["stopped_at_s"] for t in targets}
    assert all(blind_stop[j] < aware_stop[j] for j in aware_stop)  # blind finishes first
    if oracle_available():  # each GPU kept its tier's speed wherever the limits allowed it
        below = summary["seconds_below_floor"]
        assert below["tier2"] == below["tier3"] == 0.0, below
    kept = summary["throughput_retained"]
    assert kept["tier0"] >= 0.99
    assert kept["tier1"] >= 0.99
    assert summary["seconds_over_limit"]["facility"] == 0.0
    assert summary["breaker_trips"] == 0
