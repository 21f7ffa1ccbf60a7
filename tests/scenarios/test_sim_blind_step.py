"""Telemetry lost on every rack, then the contract steps down: the blind racks are cut at once.

The closed loop runs the decision core against the simulated cluster with every rack's telemetry
cut off (the `telemetry_loss` fault) from well before the step to well after it. Commands still
reach the racks; the controller counts each at the caps it last issued and cuts them to fit.
Announced (30 s of notice) the step is met with 0 s over; unannounced, the controller learns it
when it applies and its caps land two ticks later, blind or not.
"""

from __future__ import annotations

from simulator.loop import run
from simulator.scenario import Scenario

RACKS = 8
STEP_S = 60.0


def blind_step(*, blind: bool, notice_s: float = 30.0) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "blind-step",
            "duration_s": 150,
            "seed": 11,
            "topology": {
                "gpus": RACKS * 32,
                "a100_share": 0.0,
                "racks_per_row": 4,
                "site_limit_frac": 0.85,
                "rack_rating_frac": 1.0,
            },
            "workloads": [
                {"kind": "training", "name": "t", "gpus": 128, "tier": 2, "iteration_s": 4.0},
                {"kind": "inference", "name": "i", "gpus": 128, "tier": 0, "utilization": 1.0},
            ],
            "limits": {"steps": [{"at_s": STEP_S, "site_limit_frac": 0.6, "notice_s": notice_s}]},
            "faults": [
                {"kind": "telemetry_loss", "rack": r, "at_s": 20.0, "duration_s": 120.0}
                for r in range(RACKS)
            ]
            if blind
            else [],
        }
    )


def test_every_rack_blind_then_the_contract_steps_down_zero_seconds_over() -> None:
    result = run(blind_step(blind=True))
    comp = result.compliance
    assert comp.seconds_over == dict.fromkeys(comp.level_names, 0.0), comp.seconds_over
    assert not result.cluster.trips
    # The step was met, not avoided: the site ran near its old limit before it.
    assert result.time_to_cap_s[0] is not None
    assert result.time_to_cap_s[0] <= 2.0


def test_with_telemetry_the_same_step_is_met_as_fast() -> None:
    seeing = run(blind_step(blind=False))
    assert seeing.compliance.seconds_over["site"] == 0.0
    assert seeing.time_to_cap_s[0] is not None
    assert seeing.time_to_cap_s[0] <= 2.0


def test_blind_and_unannounced_the_step_costs_what_it_costs_with_telemetry() -> None:
    blind = run(blind_step(blind=True, notice_s=0.0))
    seeing = run(blind_step(blind=False, notice_s=0.0))
    assert not blind.cluster.trips
    for result in (blind, seeing):
        assert result.time_to_cap_s[0] is not None
        assert 0.0 < result.time_to_cap_s[0] <= 2.0
    assert blind.compliance.seconds_over == seeing.compliance.seconds_over
