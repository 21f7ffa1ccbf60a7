"""carbon-shift, cut to the dirty-to-clean turn of its day: less CO2 for the same daily work."""

from __future__ import annotations

from simulator.carbon import blind_twin
from simulator.loop import run
from simulator.scenario import Scenario, load_scenario
from simulator.summary import summarize

DAY_START_S = 950_400.0  # the shipped scenario's day in the CAISO trace


def _turn_of_the_day() -> Scenario:
    """Six hours, four dirty then two clean (10:00-16:00 UTC), at a coarser tick."""
    scenario = load_scenario("carbon-shift")
    grid = scenario.grid.model_copy(update={"carbon_start_s": DAY_START_S + 10 * 3600})
    return scenario.model_copy(update={"grid": grid, "tick_s": 10.0}).shortened(6 * 3600)


def test_carbon_shift_cuts_co2_and_meets_every_work_target() -> None:
    scenario = _turn_of_the_day()
    reference = run(scenario, unlimited=True)
    aware = run(scenario, controller="rheostat")
    blind = run(blind_twin(scenario), controller="rheostat")
    summary = summarize(aware, reference, blind=blind)
    assert summary["co2_reduction_vs_blind"] > 0.01
    assert summary["co2_kg"] < summarize(blind)["co2_kg"]
    targets = summary["work_targets"]
    assert {t["tier"] for t in targets} == {2, 3}
    assert all(t["met"] for t in targets), targets
    blind_targets = summarize(blind)["work_targets"]
    assert all(t["met"] for t in blind_targets), blind_targets
    # Same work both ways: the reduction is not bought by doing less.
    for a, b in zip(targets, blind_targets, strict=True):
        assert abs(a["done_s"] - b["done_s"]) <= 0.03 * a["target_s"]
    # No tier slowed past its tolerance over the run; Flex 0 untouched.
    kept = summary["throughput_retained"]
    assert kept["tier0"] >= 0.99
    assert kept["tier2"] >= 0.75
    assert kept["tier3"] >= 0.5
    assert summary["seconds_over_limit"]["facility"] == 0.0
