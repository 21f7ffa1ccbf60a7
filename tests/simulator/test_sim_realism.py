"""Realism of the simulated fleet: GPU models, servers' non-GPU power, rack shapes and limits."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from policies.gpu_models import GPU_MODELS, model_code
from simulator.build import build_cluster, build_topology, server_models
from simulator.physics import GpuConsts
from simulator.scenario import Scenario
from simulator.servers import SERVER_TYPES


def site(topology: dict[str, object], workloads: list[dict[str, object]] | None = None) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "realism",
            "duration_s": 60,
            "topology": topology,
            "physics": {"sensor_noise_frac": 0.0, "actuation_lag_s": 0.0},
            "workloads": workloads or [],
        }
    )


def test_h200_carries_the_figures_nvml_reported() -> None:
    h200 = GPU_MODELS[model_code("H200-SXM")]
    assert (h200.min_cap_w, h200.max_cap_w) == (200.0, 700.0)
    assert (h200.min_sm_clock_mhz, h200.max_sm_clock_mhz, h200.sm_clock_step_mhz) == (
        345.0,
        1980.0,
        15.0,
    )
    assert h200.idle_w == 79.0
    for name in ("H100-SXM5", "H200-SXM", "B200", "GB200"):
        assert name in SERVER_TYPES
    # The first codes keep their meaning (snapshots and scenarios store them).
    assert model_code("H100-SXM5") == 0
    assert model_code("A100-SXM4") == 1


def test_models_per_workload_and_per_rack() -> None:
    sc = site(
        {"gpus": 128, "gpu_model": "H200-SXM", "rack_models": ["B200", "H100-SXM5"]},
        [{"kind": "training", "name": "t", "gpus": 16, "gpu_model": "GB200"}],
    )
    models = server_models(sc)  # 16 servers of 8, racks of 4 servers
    names = [GPU_MODELS[m].name for m in models]
    assert names[:2] == ["GB200", "GB200"]  # the workload's servers
    assert names[2:4] == ["B200", "B200"]  # the rest of rack 0
    assert names[4:8] == ["H100-SXM5"] * 4  # rack 1
    assert names[8:12] == ["B200"] * 4  # the rack pattern repeats
    cluster = build_cluster(sc)
    assert cluster.topology.gpu_max_cap_w[0] == 1200.0
    assert cluster.topology.gpu_max_cap_w[16] == 1000.0
    assert cluster.topology.gpu_max_cap_w[32] == 700.0


def test_model_names_and_server_boundaries_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown GPU model"):
        site({"gpus": 64, "gpu_model": "B300"})
    with pytest.raises(ValidationError, match="whole servers"):
        site({"gpus": 64}, [{"kind": "training", "name": "t", "gpus": 12, "gpu_model": "B200"}])


def test_nvl72_racks_ratings_and_rows() -> None:
    spec = site(
        {
            "gpus": 576,
            "gpu_model": "GB200",
            "gpus_per_server": 4,
            "servers_per_rack": 18,
            "racks_per_row": 4,
            "rack_ratings_kw": [132, 125],
            "row_limits_kw": [400],
        }
    ).topology
    topo = build_topology(spec, 0.95)
    assert topo.n_racks == 8
    assert set(topo.rack_sizes().tolist()) == {72}
    np.testing.assert_array_equal(topo.racks.limit_w, [132e3, 125e3] * 4)
    np.testing.assert_array_equal(topo.levels[2].limit_w, [400e3, 400e3])
    # A rack flat out: 72 x 1.2 kW and 18 trays' non-GPU peak, through the PSUs: ~120 kW.
    full_rack_w = (72 * 1200.0 + 18 * SERVER_TYPES["GB200"].non_gpu_peak_w) / 0.95
    assert 115e3 < full_rack_w < 125e3
    by_frac = build_topology(
        spec.model_copy(update={"row_limits_kw": (), "row_limit_frac": 0.9}), 0.95
    )
    np.testing.assert_allclose(by_frac.levels[2].limit_w, 4 * full_rack_w * 0.9)
    with pytest.raises(ValidationError, match="at most one"):
        site({"gpus": 64, "row_limit_frac": 0.9, "row_limits_kw": [100]})


def test_non_gpu_power_follows_gpu_load_between_idle_and_the_budgeted_peak() -> None:
    """DGX H100: 2.8 kW beside the GPUs at training peak (8.4 kW with 5.6 kW of GPUs); idle GPUs
    leave the type's idle share of it. The topology still carries the peak for the controller."""
    sc = site({"gpus": 8, "a100_share": 0.0, "rack_rating_frac": 2.0})
    cluster = build_cluster(sc)
    peak = SERVER_TYPES["H100-SXM5"].non_gpu_peak_w
    assert cluster.topology.levels[0].overhead_w[0] == peak
    consts = GpuConsts.for_models(cluster.topology.gpu_model)
    idle = cluster.server_non_gpu_w(consts.idle_w)
    full = cluster.server_non_gpu_w(consts.idle_w + consts.span_w)
    half = cluster.server_non_gpu_w(consts.idle_w + 0.5 * consts.span_w)
    assert full[0] == pytest.approx(peak)
    assert idle[0] == pytest.approx(peak * SERVER_TYPES["H100-SXM5"].non_gpu_idle_frac)
    assert half[0] == pytest.approx((idle[0] + full[0]) / 2)
    assert 5600.0 + full[0] == pytest.approx(8400.0)
    # An idle cluster draws the idle share through its PSUs.
    cluster.step()
    gpu_w = float(cluster.gpu.power_w.sum())
    expected = (gpu_w + float(cluster.server_non_gpu_w()[0])) / cluster.params.psu_efficiency
    assert cluster.site_power_w == pytest.approx(expected)
    assert cluster.site_power_w < (gpu_w + peak) / cluster.params.psu_efficiency
    fixed = build_cluster(site({"gpus": 8, "a100_share": 0.0, "non_gpu_idle_frac": 1.0}))
    assert fixed.server_non_gpu_w(consts.idle_w)[0] == pytest.approx(peak)


def test_undrawn_power_is_split_by_what_the_gpus_run_and_non_gpu_power_below_peak() -> None:
    """`SimCluster.undrawn_w`, the steady gap's parts: a GPU its cap holds back adds nothing, one
    under its cap adds cap less draw, filed by its job; non-GPU power adds what it is below peak."""
    training = {"kind": "training", "name": "t", "gpus": 8, "tier": 1, "iteration_s": 6.0}
    sc = site({"gpus": 16, "a100_share": 0.0, "rack_rating_frac": 2.0}, [training])
    cluster = build_cluster(sc)
    topo, eff = cluster.topology, cluster.params.psu_efficiency
    job, idle = slice(0, 8), slice(8, 16)
    caps = topo.gpu_min_cap_w.copy()
    caps[job] = 300.0  # well under a computing H100's draw
    cluster.command(caps, cluster.consts.max_clock_mhz)
    cluster.step()
    cluster.step()  # in the job's compute phase (the first 70 % of each 6 s step)
    power = cluster.gpu.power_w
    sync, service, jobless, non_gpu = cluster.undrawn_w()
    assert sync == 0.0  # held back by its caps: it draws them
    assert service == 0.0
    assert jobless == pytest.approx(float((caps[idle] - power[idle]).sum()) / eff)
    assert jobless > 8 * 50.0 / eff  # min cap 200 W, idle draw well under it
    peak = SERVER_TYPES["H100-SXM5"].non_gpu_peak_w
    below = 2 * peak - float(cluster.server_non_gpu_w().sum())
    assert non_gpu == pytest.approx(below / eff)
    assert non_gpu > 0.0  # the jobless server runs at its idle share
    # At the max cap a computing GPU draws under it: that gap is the job's.
    caps[job] = topo.gpu_max_cap_w[job]
    cluster.command(caps, cluster.consts.max_clock_mhz)
    cluster.step()
    power = cluster.gpu.power_w
    sync = cluster.undrawn_w()[0]
    assert sync == pytest.approx(float((caps[job] - power[job]).sum()) / eff)
    assert sync > 0.0
