"""Grid events and faults in the closed loop: a demand-response cut, a rack going silent."""

from __future__ import annotations

import numpy as np

from simulator.loop import run
from simulator.scenario import Scenario, load_scenario


def with_dr() -> Scenario:
    base = load_scenario("steady").shortened(900)
    grid = {
        "dr_events": [
            {
                "start_s": 300,
                "ramp_s": 60,
                "notification_s": 120,
                "duration_s": 300,
                "recovery_s": 120,
                "reduction_frac": 0.25,
            }
        ]
    }
    return Scenario.model_validate(base.model_dump() | {"grid": grid})


def test_demand_response_cut_is_delivered() -> None:
    result = run(with_dr(), controller="rheostat")
    s = result.series
    t = np.asarray(s.t_s)
    power = np.asarray(s.site_power_w)
    dr = np.asarray(s.dr_limit_w)
    hold = (t >= 310) & (t < 600)
    assert np.isfinite(dr[hold]).all()
    baseline = float(power[(t >= 100) & (t < 240)].mean())
    # A 25 % cut of the pre-event baseline, held (within the limiter's settle) the whole event.
    assert np.allclose(dr[hold], 0.75 * baseline, rtol=0.05)
    assert np.all(power[hold] <= dr[hold] * 1.01)
    assert not np.isfinite(dr[t < 150]).any()
    free = run(with_dr(), controller="none")
    assert np.asarray(free.series.site_power_w)[hold].max() > 0.8 * baseline


def test_a_silent_rack_is_held_at_its_worst_case_and_nothing_trips() -> None:
    base = load_scenario("budget-step").shortened(900)
    faults = [{"kind": "telemetry_loss", "rack": 0, "at_s": 500, "duration_s": 300}]
    scenario = Scenario.model_validate(base.model_dump() | {"faults": faults})
    result = run(scenario, controller="rheostat")
    assert result.cluster.trips == []
    assert result.compliance.max_overshoot_frac < 0.35  # only the step itself, before caps land
    # Counted at its worst case, the silent rack cannot push the site over the lowered limit.
    assert result.compliance.seconds_over["site"] <= 5.0
    t = np.asarray(result.series.t_s)
    power = np.asarray(result.series.site_power_w)
    limit = np.asarray(result.series.site_limit_w)
    late = (t >= 610) & (t < 800)
    assert np.all(power[late] <= limit[late] * 1.001)
