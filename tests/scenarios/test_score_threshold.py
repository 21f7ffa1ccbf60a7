"""The scoreboard's `threshold` baseline: Slurm-style two-threshold capping with bounded steps."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from controller.cli import main
from policies.decision import Limits
from policies.fleet import FleetState
from policies.topology import Topology, generate_topology
from simulator.baselines import ThresholdController, ThresholdSettings

#: Two racks of 32 GPUs, every limit but the site's out of the way.
N_GPUS = 64


def _topology(site_limit_w: float) -> Topology:
    return generate_topology(
        N_GPUS,
        rack_limit_w=1e9,
        row_limit_w=1e9,
        site_limit_w=site_limit_w,
        server_overhead_w=0.0,
    )


def _fleet(topo: Topology, power_w: float) -> FleetState:
    fleet = FleetState.empty(topo)
    fleet.power_w[:] = power_w
    return fleet


def _fresh(topo: Topology) -> np.ndarray:
    return np.zeros(topo.n_racks, dtype=bool)


def test_over_upper_threshold_lowers_every_cap_by_one_bounded_step() -> None:
    topo = _topology(site_limit_w=N_GPUS * 300.0)
    ctl = ThresholdController(topo)
    act = ctl.decide(_fleet(topo, 290.0), Limits(), 0.0, _fresh(topo))  # 96.7 % of the limit
    assert act is not None
    caps, clocks = act
    span = topo.gpu_max_cap_w - topo.gpu_min_cap_w
    np.testing.assert_allclose(caps, topo.gpu_max_cap_w - 0.05 * span)
    assert np.all(clocks >= 1e4)


def test_below_lower_threshold_raises_and_in_between_holds() -> None:
    topo = _topology(site_limit_w=N_GPUS * 300.0)
    ctl = ThresholdController(topo)
    ctl.cap_w = topo.gpu_min_cap_w.copy()
    span = topo.gpu_max_cap_w - topo.gpu_min_cap_w
    act = ctl.decide(_fleet(topo, 250.0), Limits(), 0.0, _fresh(topo))  # 83 %: raise
    assert act is not None
    np.testing.assert_allclose(act[0], topo.gpu_min_cap_w + 0.02 * span)
    held = ctl.decide(_fleet(topo, 280.0), Limits(), 1.0, _fresh(topo))  # 93 %: hold
    assert held is not None
    np.testing.assert_allclose(held[0], topo.gpu_min_cap_w + 0.02 * span)


def test_caps_stay_within_the_gpu_range_and_act_once_per_interval() -> None:
    topo = _topology(site_limit_w=N_GPUS * 100.0)
    settings = ThresholdSettings(decrease_frac=0.5, interval_s=5.0)
    ctl = ThresholdController(topo, settings)
    fleet = _fleet(topo, 400.0)
    first = ctl.decide(fleet, Limits(), 0.0, _fresh(topo))
    again = ctl.decide(fleet, Limits(), 1.0, _fresh(topo))  # inside the interval: no new step
    assert first is not None
    assert again is not None
    np.testing.assert_array_equal(first[0], again[0])
    for t in (5.0, 10.0, 15.0):
        out = ctl.decide(fleet, Limits(), t, _fresh(topo))
        assert out is not None
    np.testing.assert_allclose(ctl.cap_w, topo.gpu_min_cap_w)


def test_the_tighter_of_contract_and_topology_limits_drives_it() -> None:
    topo = _topology(site_limit_w=N_GPUS * 1000.0)
    ctl = ThresholdController(topo)
    fleet = _fleet(topo, 290.0)
    act = ctl.decide(fleet, Limits(site_limit_w=N_GPUS * 300.0), 0.0, _fresh(topo))
    assert act is not None
    assert np.all(act[0] < topo.gpu_max_cap_w)


def test_a_stale_rack_counts_at_its_max_caps() -> None:
    """Reported power is low, but one rack is silent: its worst case alone breaks the limit."""
    topo = _topology(site_limit_w=1e9)
    topo.racks.limit_w[:] = 32 * 650.0
    ctl = ThresholdController(topo)
    stale = _fresh(topo)
    stale[1] = True
    load = ctl.load_frac(_fleet(topo, 100.0), Limits(), stale)
    rack = topo.gpu_group[topo.rack_level]
    usable = topo.racks.usable_w
    expected_stale = topo.group_sum(topo.rack_level, topo.gpu_max_cap_w)[1] / usable[1]
    assert load[rack == 1] == pytest.approx(expected_stale)
    assert np.all(load[rack == 0] < 0.5)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="lower_frac"):
        ThresholdSettings(lower_frac=0.96)
    with pytest.raises(ValueError, match="positive"):
        ThresholdSettings(increase_frac=0.0)


def test_simulate_runs_the_threshold_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "steady", "--duration", "60", "--controller", "threshold", "--json"]
    assert main(argv) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["controller"] == "threshold"
    assert summary["breaker_trips"] == 0
    assert 0.0 < summary["throughput_retained"]["weighted"] <= 1.0
