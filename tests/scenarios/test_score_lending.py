"""Headroom lending in the closed loop: no trip, no second over a breaker, and less power left
unused than without it, on the scenario whose limit step leaves the most undrawn headroom."""

from __future__ import annotations

import pytest

from bench.control import LEND, run_scenario
from simulator.scenario import load_scenario


@pytest.mark.slow
def test_lending_never_trips_a_breaker_and_narrows_the_steady_gap() -> None:
    scenario = load_scenario("budget-step")
    runs = run_scenario(scenario, ["rheostat", LEND])
    plain, lent = runs["rheostat"], runs[LEND]
    assert lent["breaker_trips"] == 0
    board = lent["scoreboard"]
    assert board["breaker_over_s"] == 0.0
    # The unannounced step is met as fast with lending as without it.
    assert board["to_cap_ticks"] == plain["scoreboard"]["to_cap_ticks"]
    assert board["steady_gap_pct"] < plain["scoreboard"]["steady_gap_pct"]
    assert lent["throughput_retained"]["weighted"] > plain["throughput_retained"]["weighted"]
    assert lent["throughput_retained"]["tier0"] >= plain["throughput_retained"]["tier0"]
