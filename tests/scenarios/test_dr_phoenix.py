"""The `phoenix` scenario, shortened: a -25 % grid event at the afternoon peak, 10 minutes' notice.

The shortened run keeps the 10-minute notice, the 900 s pre-event baseline window and the first
15 minutes of the 3-hour hold (the hold is a steady state, so its start is where delivery is
decided). The targets come from the issue; the summary's `dr` list is what is checked, the same
list `rheostat simulate phoenix --json` prints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simulator.build import build_cluster
from simulator.carbon import job_power_curve
from simulator.loop import run_with_baseline
from simulator.physics import IDLE_W, PEAK_W
from simulator.scenario import load_scenario
from simulator.summary import summarize
from simulator.workloads import TRAIN_COMM_ACTIVITY

HOLD_CHECKED_S = 900.0


@pytest.fixture(scope="module")
def phoenix() -> dict[str, Any]:
    scenario = load_scenario("phoenix")
    event = scenario.grid.dr_events[0]
    assert event.reduction_frac == 0.25
    assert event.notification_s == 600.0
    assert event.duration_s == 3 * 3600.0
    assert scenario.topology.gpus == 256
    assert scenario.topology.a100_share == 1.0
    assert {w.tier for w in scenario.workloads} == {0, 1, 2, 3}
    controlled, reference = run_with_baseline(scenario.shortened(event.start_s + HOLD_CHECKED_S))
    return summarize(controlled, reference)


def test_phoenix_delivers_the_grid_target(phoenix: dict[str, Any]) -> None:
    [dr] = phoenix["dr"]
    assert dr["target_reached_s"] is not None
    assert dr["target_reached_s"] <= 30.0
    assert dr["compliance"] >= 0.99
    assert dr["hold_s"] == pytest.approx(HOLD_CHECKED_S, abs=5.0)
    assert dr["target_kw"] == pytest.approx(0.75 * dr["baseline_kw"])
    assert dr["mean_delivered_reduction_kw"] >= 0.99 * 0.25 * dr["baseline_kw"]
    assert phoenix["breaker_trips"] == 0


def test_phoenix_protects_flex_0(phoenix: dict[str, Any]) -> None:
    [dr] = phoenix["dr"]
    assert dr["throughput_retained"]["0"] >= 0.995
    assert phoenix["throughput_retained"]["tier0"] >= 0.995


@pytest.mark.xfail(
    strict=True,
    reason="out of physical reach as specified: at the peak the site draws ~124 kW, of which 48 kW "
    "is non-GPU server power (1.5 kW per 8xA100 server) and ~69 kW GPUs; a 25 % site cut is ~45 % "
    "of GPU power, and with Flex 0 (8.5 kW) at full speed the best split of the remaining 31.6 kW "
    "over the three training jobs, on the simulator's own power-speed curves and ignoring every "
    "priority, retains at most 0.68 of fleet throughput (the run measures ~0.58 during the hold)",
)
def test_phoenix_fleet_throughput_target(phoenix: dict[str, Any]) -> None:
    [dr] = phoenix["dr"]
    assert dr["fleet_throughput_retained"] >= 0.95


def test_phoenix_follows_the_ramp_without_overshoot(phoenix: dict[str, Any]) -> None:
    assert phoenix["seconds_over_limit"]["site"] == 0.0


def test_phoenix_fleet_throughput_ceiling_is_below_the_target() -> None:
    """Why the 0.95 target is out of reach: the best any allocation could do, from the physics.

    Run the fleet uncapped to the event's start, then split the GPU power the -25 % target leaves
    (after server overhead and Flex 0 at full draw) over the three training jobs to maximise
    GPU-weighted speed, on each job's own power-speed curve, priorities ignored.
    """
    scenario = load_scenario("phoenix")
    event = scenario.grid.dr_events[0]
    cluster = build_cluster(scenario, enforce_breakers=False)
    while cluster.now_s < event.start_s - 600:
        cluster.step()
    gpu_w, site_w, n = np.zeros(cluster.topology.n_gpus), 0.0, 0
    while cluster.now_s < event.start_s:
        cluster.step()
        gpu_w += cluster.gpu.power_w
        site_w += cluster.site_power_w
        n += 1
    gpu_w, site_w = gpu_w / n, site_w / n
    overhead_w = float(cluster.topology.levels[0].overhead_w.sum())
    assert event.reduction_frac is not None
    budget_w = (1.0 - event.reduction_frac) * site_w * cluster.params.psu_efficiency - overhead_w
    wl = cluster.workloads
    [serving] = wl.inference
    assert serving.tier == 0
    left_w = budget_w - float(gpu_w[serving.start_gpu : serving.start_gpu + serving.n_gpus].sum())
    model = int(cluster.topology.gpu_model[0])
    idle, span = float(IDLE_W[model]), float(PEAK_W[model] - IDLE_W[model])
    speed = np.linspace(0.2, 1.0, 81)
    jobs = list(wl.training)
    # Each job's draw above idle at full speed (its compute and communication phases at their
    # activities), scaled by its own normalised power-speed curve.
    full = [
        job.compute_activity * (1.0 - job.comm_frac) + TRAIN_COMM_ACTIVITY * job.comm_frac
        for job in jobs
    ]
    curves = [
        job_power_curve(job.comm_frac, compute_activity=job.compute_activity, alpha=job.alpha)
        for job in jobs
    ]
    power = [
        job.n_gpus * (idle + span * f * c.power_at(speed))
        for job, f, c in zip(jobs, full, curves, strict=True)
    ]
    work = [job.n_gpus * speed for job in jobs]
    total_w = power[0][:, None, None] + power[1][None, :, None] + power[2][None, None, :]
    total_work = work[0][:, None, None] + work[1][None, :, None] + work[2][None, None, :]
    best = float(np.where(total_w <= left_w, total_work, 0.0).max())
    ceiling = (serving.n_gpus + best) / cluster.topology.n_gpus
    assert len(jobs) == 3
    assert 0.5 < ceiling < 0.95
