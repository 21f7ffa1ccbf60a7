"""The simulator's side of carbon shifting: the job power curve, the cap floor, the schedules."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from policies.gpu_models import model_table
from simulator.carbon import CarbonPolicySpec, floor_cap_w, job_power_curve
from simulator.physics import ALPHA_COMPUTE, dynamic_fraction
from simulator.workloads import TRAIN_COMPUTE_ACTIVITY


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


def test_floor_cap_gives_the_compute_phase_the_clock_the_speed_needs() -> None:
    idle_w = np.asarray(model_table("idle_w"), dtype=np.float64)
    span_w = np.asarray(model_table("max_cap_w"), dtype=np.float64) - idle_w
    full = floor_cap_w(1.0, 0.2, idle_w, span_w)
    np.testing.assert_allclose(full, idle_w + TRAIN_COMPUTE_ACTIVITY * span_w)
    low = floor_cap_w(0.53, 0.2, idle_w, span_w)
    assert np.all(low < full)
    assert np.all(low > idle_w)
    # Round trip: the clock that fits in this cap at compute activity runs the job at 0.53.
    dyn = (low - idle_w) / (span_w * TRAIN_COMPUTE_ACTIVITY)
    clock = np.linspace(0.2, 1.0, 80001)
    x = np.interp(dyn, dynamic_fraction(clock), clock)
    speed = 1.0 / (0.8 / x**ALPHA_COMPUTE + 0.2)
    np.testing.assert_allclose(speed, 0.53, atol=1e-4)


def test_schedule_must_be_one_of_the_three() -> None:
    assert CarbonPolicySpec().schedule == "carbon"
    assert CarbonPolicySpec(schedule="run_to_target").schedule == "run_to_target"
    with pytest.raises(ValidationError):
        CarbonPolicySpec.model_validate({"schedule": "blind"})
    with pytest.raises(ValidationError):
        CarbonPolicySpec.model_validate({"signal_aware": False})
