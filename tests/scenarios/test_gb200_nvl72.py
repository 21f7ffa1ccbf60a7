"""The GB200 NVL72 hall: 72-GPU racks under rack feeds, row limits and a DR event, held by the
rheostat controller with no trip and no second over any breaker or limit."""

from __future__ import annotations

import numpy as np

from simulator.loop import run_with_baseline
from simulator.scenario import load_scenario
from simulator.summary import summarize


def test_gb200_nvl72_runs_safe_under_rheostat() -> None:
    scenario = load_scenario("gb200-nvl72")
    controlled, reference = run_with_baseline(scenario, controller="rheostat")
    topo = controlled.cluster.topology
    assert set(topo.rack_sizes().tolist()) == {72}
    assert np.isfinite(topo.levels[2].limit_w).all()  # rows are limited
    # Uncontrolled, the racks would draw past their derated feeds: the caps are what hold them.
    uncontrolled = np.max(np.asarray(reference.series.rack_power_w), axis=0)
    assert np.any(uncontrolled > topo.racks.usable_w)
    summary = summarize(controlled, reference)
    assert summary["breaker_trips"] == 0
    over = summary["seconds_over_limit"]
    assert over["rack"] == 0.0
    assert over["row"] == 0.0
    assert over["site"] == 0.0
    (event,) = summary["dr"]
    assert event["compliance"] >= 0.99
    assert summary["throughput_retained"]["tier0"] >= 0.99
    assert set(summary["inference_latency_s"]) == {"tier0"}
