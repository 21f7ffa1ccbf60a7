"""The simulator's side of carbon shifting: the job power curve and the schedules."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from simulator.carbon import job_power_curve
from simulator.carbon_report import work_targets
from simulator.feature_specs import CarbonPolicySpec
from simulator.loop import run
from simulator.scenario import Scenario


def test_job_power_curve_is_normalised_convex_and_cheaper_per_work_when_slower() -> None:
    curve = job_power_curve(comm_frac=0.2)
    assert curve.speed[-1] == pytest.approx(1.0)
    assert curve.power[-1] == pytest.approx(1.0)
    assert np.all(np.diff(curve.power) > 0)
    assert np.all(np.diff(curve.slope) > 0)
    # Above the voltage knee power falls faster than speed: energy per unit of work drops.
    assert curve.power_at(0.75) / 0.75 < 0.8
    # More communication: the same clock cut costs less speed, so low speeds need less power.
    assert job_power_curve(comm_frac=0.5).power_at(0.7) < curve.power_at(0.7)


def test_schedule_must_be_one_of_the_three() -> None:
    assert CarbonPolicySpec().schedule == "carbon"
    assert CarbonPolicySpec(schedule="run_to_target").schedule == "run_to_target"
    with pytest.raises(ValidationError):
        CarbonPolicySpec.model_validate({"schedule": "blind"})
    with pytest.raises(ValidationError):
        CarbonPolicySpec.model_validate({"signal_aware": False})


def _windowed(schedule: str) -> Scenario:
    """One Flex 3 job that runs from 10 min to 50 min of an hour, on a clean-then-dirty trace."""
    return Scenario.model_validate(
        {
            "name": "windowed",
            "duration_s": 3600,
            "tick_s": 5.0,
            "topology": {"gpus": 32},
            "controller": {"warmup_s": 0},
            "workloads": [
                {
                    "kind": "training",
                    "name": "sweep",
                    "gpus": 16,
                    "tier": 3,
                    "iteration_s": 2.0,
                    "start_s": 600,
                    "end_s": 3000,
                }
            ],
            # 13:00 UTC on the shipped day: dirty until ~13:50, then clean.
            "grid": {"carbon": "caiso", "carbon_start_s": 950_400 + 13 * 3600},
            "carbon_policy": {"schedule": schedule},
        }
    )


def test_each_schedule_meets_the_windowed_target_then_stops() -> None:
    results = {s: run(_windowed(s)) for s in ("run_to_target", "carbon")}
    for schedule, result in results.items():
        (entry,) = work_targets(result)
        assert entry["target_s"] == pytest.approx(0.7 * 2400)  # the window, not the stopped end
        assert entry["met"], (schedule, entry)
        assert entry["done_s"] <= entry["target_s"] + 10.0  # stopped at the target
        assert entry["max_slowdown"] <= entry["tolerance"]
    blind = work_targets(results["run_to_target"])[0]
    # Full speed from its start: done 0.7 of the way through its window.
    assert blind["stopped_at_s"] == pytest.approx(600 + 0.7 * 2400, abs=30)
    assert blind["max_slowdown"] < 0.02
    aware = work_targets(results["carbon"])[0]
    assert aware["stopped_at_s"] > blind["stopped_at_s"]  # slowed through the dirty part
    assert aware["max_slowdown"] > 0.3


def test_power_curve_follows_the_jobs_own_activity_exponent_and_static_share() -> None:
    """A memory-bound job (decode's exponent) loses little speed for a lot of power; a static
    share is power the job draws at any clock, so slowing it saves less."""
    flat = job_power_curve(0.2, compute_activity=0.2, alpha=0.15)
    assert flat.power_at(0.9) < job_power_curve(0.2, compute_activity=0.2).power_at(0.9)
    static = job_power_curve(0.2, static_frac=0.3)
    assert static.power_at(0.6) > job_power_curve(0.2).power_at(0.6)
