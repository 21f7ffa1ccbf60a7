"""The cluster: actuation lag, telemetry delay, breaker trips, measured work, scenario files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policies.errors import ConfigError, ConfigErrors
from policies.fleet import FleetState
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.rates import _azure_trace, azure_trace_tokens
from simulator.scenario import Scenario, load_scenario


def scenario(**over: object) -> Scenario:
    base: dict[str, object] = {
        "name": "unit",
        "duration_s": 600,
        "seed": 1,
        "topology": {"gpus": 64, "a100_share": 0.0, "rack_rating_frac": 1.25},
        "physics": {"actuation_lag_s": 2.0, "telemetry_delay_s": 3.0, "sensor_noise_frac": 0.0},
        "workloads": [
            {"kind": "training", "name": "t", "gpus": 32, "iteration_s": 4.0, "comm_frac": 0.25},
            {
                "kind": "inference",
                "name": "i",
                "gpus": 32,
                "utilization": 0.5,
                "bursts_per_hour": 0,
            },
        ],
    }
    base.update(over)
    return Scenario.model_validate(base)


def run_ticks(cluster: SimCluster, n: int) -> None:
    for _ in range(n):
        cluster.step()


def test_caps_land_after_the_actuation_lag() -> None:
    cluster = build_cluster(scenario())
    run_ticks(cluster, 5)
    cluster.command(np.full(64, 300.0), np.full(64, 1980.0))
    cluster.step()
    assert np.all(cluster.cap_w == 700.0)
    run_ticks(cluster, 2)
    assert np.all(cluster.cap_w == 300.0)
    run_ticks(cluster, 3)
    assert cluster.gpu.power_w.max() <= 300.0 * 1.001


def test_controller_sees_telemetry_late() -> None:
    cluster = build_cluster(scenario())
    run_ticks(cluster, 10)
    fleet = FleetState.empty(cluster.topology)
    cluster.fill_fleet(fleet)
    assert fleet.rack_last_seen_s.max() == pytest.approx(cluster.now_s - 1.0 - 3.0)
    cluster.command(np.full(64, 250.0), np.full(64, 1980.0))
    run_ticks(cluster, 3)
    assert cluster.gpu.power_w.max() <= 250.0 * 1.001
    cluster.fill_fleet(fleet)
    assert fleet.cap_w.max() == 700.0  # the reading predates the new caps
    run_ticks(cluster, 3)
    cluster.fill_fleet(fleet)
    assert fleet.cap_w.max() == 250.0


def test_overloaded_rack_trips_and_goes_dark() -> None:
    sc = scenario(
        topology={"gpus": 64, "a100_share": 0.0, "rack_rating_frac": 0.4},
        workloads=[{"kind": "training", "name": "t", "gpus": 64, "iteration_s": 2.0}],
    )
    cluster = build_cluster(sc)
    run_ticks(cluster, 600)
    assert len(cluster.trips) == cluster.topology.n_racks
    assert np.all(cluster.rack_power_w == 0.0)
    assert np.all(cluster.gpu.power_w == 0.0)
    before = cluster.workloads.work[0]
    run_ticks(cluster, 10)
    assert cluster.workloads.work[0] == before  # a dark rack does no work


def test_work_is_measured_from_delivered_speed() -> None:
    free = build_cluster(scenario())
    capped = build_cluster(scenario())
    capped.command(np.full(64, 250.0), np.full(64, 1980.0))
    run_ticks(free, 600)
    run_ticks(capped, 600)
    train_free, train_capped = free.workloads.work[0], capped.workloads.work[0]
    assert train_free == pytest.approx(600 / 4.0, rel=0.02)  # iterations at full speed
    assert 0.3 * train_free < train_capped < 0.9 * train_free
    # Inference at 50 % utilisation absorbs a cap through its backlog; it keeps most tokens.
    tok_free, tok_capped = free.workloads.work[1], capped.workloads.work[1]
    assert tok_free > 0
    assert 0.5 * tok_free < tok_capped <= tok_free * 1.0001


def test_azure_trace_keeps_every_token() -> None:
    t, ctx, gen = _azure_trace()
    assert t.size == 19_366
    n_ticks = int(t[-1]) + 1
    prompt, generated = azure_trace_tokens(n_ticks, 1.0)
    assert prompt.sum() == pytest.approx(ctx.sum())
    assert generated.sum() == pytest.approx(gen.sum())
    stretched, _ = azure_trace_tokens(2 * n_ticks, 1.0, time_scale=2.0)
    assert stretched.sum() == pytest.approx(ctx.sum(), rel=0.01)


def test_bad_scenario_reports_every_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\n"
        "duration_s: -5\n"
        "topology:\n"
        "  gpus: 12\n"
        "workloads:\n"
        "  - {kind: training, name: t, gpus: 8, tier: 7}\n"
    )
    with pytest.raises(ConfigErrors) as info:
        load_scenario(str(path))
    errors = {e.field: e.line for e in info.value.errors}
    assert errors["duration_s"] == 2
    assert errors["topology"] == 3
    assert errors["workloads.0.training.tier"] == 6
    assert all(e.file == str(path) for e in info.value.errors)


def test_unknown_scenario_names_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="steady"):
        load_scenario("no-such-scenario")


def test_jobs_arrive_and_depart_on_schedule() -> None:
    sc = scenario(
        workloads=[
            {"kind": "training", "name": "late", "gpus": 32, "start_s": 100, "end_s": 200},
        ]
    )
    cluster = build_cluster(sc)
    job_rows = slice(0, 32)
    run_ticks(cluster, 50)
    assert cluster.gpu.power_w[job_rows].max() == pytest.approx(80.0)  # not arrived: idle
    run_ticks(cluster, 100)
    assert cluster.gpu.power_w[job_rows].mean() > 300.0
    run_ticks(cluster, 100)
    assert cluster.gpu.power_w[job_rows].max() == pytest.approx(80.0)  # departed
    assert cluster.workloads.work[0] == pytest.approx(100 / 6.0, rel=0.05)


def test_rack_demand_is_the_draw_the_caps_hold_back() -> None:
    cluster = build_cluster(scenario())
    run_ticks(cluster, 20)
    # Uncapped, every GPU already draws what it would: demand is the measured rack power.
    np.testing.assert_allclose(cluster.rack_demand_w(), cluster.rack_power_w, rtol=1e-9)
    cluster.command(np.full(64, 250.0), np.full(64, 1980.0))
    run_ticks(cluster, 10)
    demand, power = cluster.rack_demand_w(), cluster.rack_power_w
    # Capped, the busy racks draw less than they would, by about what the caps cut.
    busy = cluster.gpu.power_w > 240.0
    assert busy.any()
    assert np.all(demand >= power - 1e-6)
    assert demand.sum() - power.sum() > 0.5 * busy.sum() * (700.0 - 250.0) * 0.5
