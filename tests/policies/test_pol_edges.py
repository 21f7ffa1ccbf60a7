"""The decision core at the edges of its inputs: no limit at all, large loss budgets, and
previous caps from outside a model's range."""

from __future__ import annotations

import numpy as np
import pytest

from policies.decision import DecisionState, DvfsSettings, Limits, PolicySettings
from policies.gpu_models import GPU_MODELS
from policies.pipeline import decide
from policies.topology import Topology
from tests.policies.pol_instances import build_topology, busy_fleet

INF = float("inf")


def small_site(*, rack_w: float, site_w: float) -> Topology:
    """Two servers of two GPUs (an H100 server and an A100 server) in two racks."""
    return build_topology(
        [2, 2],
        [0, 1],
        [],
        gpu_model=[0, 0, 1, 1],
        server_limit_w=[INF, INF],
        rack_limit_w=[rack_w, rack_w],
        row_limit_w=[],
        site_limit_w=site_w,
        server_overhead_w=[100.0, 100.0],
        rack_derating=[0.8, 0.8],
    )


@pytest.mark.parametrize(
    ("rack_w", "site_w"), [(INF, INF), (5000.0, INF)], ids=["nothing", "racks-only"]
)
def test_a_site_without_a_limit_gives_every_gpu_its_demand(rack_w: float, site_w: float) -> None:
    topo = small_site(rack_w=rack_w, site_w=site_w)
    fleet = busy_fleet(topo, np.array([0.9, 0.5, 0.8, 0.3]), 0.0)
    decision, _ = decide(
        topo,
        fleet,
        tier=np.array([0, 1, 2, 3], np.int8),
        limits=Limits(),
        settings=PolicySettings(),
        state=None,
        now_s=0.0,
    )
    assert np.all(decision.cap_w >= decision.demand_w - 1e-9)
    assert np.all(decision.demand_w > topo.gpu_min_cap_w)  # so the min cap would not do
    # Nothing binds, so the surplus goes too: every GPU runs uncapped.
    np.testing.assert_array_equal(decision.cap_w, topo.gpu_max_cap_w)
    assert decision.site_allowed_w == INF


@pytest.mark.parametrize("loss", [0.24, 0.3, 0.5, 0.9, 0.999, 1.0, 5.0])
def test_a_large_loss_budget_keeps_clocks_inside_each_models_range(loss: float) -> None:
    topo = small_site(rack_w=INF, site_w=INF)
    fleet = busy_fleet(topo, np.full(4, 0.5), 0.0)
    fleet.util[:], fleet.mem_util[:] = 0.1, 0.9  # memory-bound everywhere
    # Flex 3 tolerates half its speed, so a budget up to that reaches the model's lowest clock.
    decision, _ = decide(
        topo,
        fleet,
        tier=np.full(4, 3, np.int8),
        limits=Limits(),
        settings=PolicySettings(dvfs=DvfsSettings(max_loss_frac=loss)),
        state=None,
        now_s=0.0,
    )
    lo = np.array([GPU_MODELS[m].min_sm_clock_mhz for m in topo.gpu_model])
    hi = np.array([GPU_MODELS[m].max_sm_clock_mhz for m in topo.gpu_model])
    clock = decision.sm_clock_max_mhz
    assert np.all(clock >= lo)
    assert np.all(clock <= hi)
    assert np.all(clock < hi)  # memory-bound: still lowered
    if loss >= 0.5:  # a budget that large allows the lowest clock
        np.testing.assert_array_equal(clock, lo)
    np.testing.assert_array_equal((clock - lo) % 15.0, 0.0)  # on the grid


def test_previous_caps_outside_each_models_range_are_clamped() -> None:
    topo = small_site(rack_w=INF, site_w=5000.0)
    fleet = busy_fleet(topo, np.full(4, 0.8), 1.0)
    # A stale A100 at 700 W, an H100 at 705 W (inside the deadband of its 700 W max), and caps
    # below each model's minimum, one of them below idle.
    previous = np.array([705.0, 20.0, 700.0, 60.0])
    state = DecisionState(cap_w=previous, now_s=0.0, site_allowed_w=5000.0)
    decision, _ = decide(
        topo,
        fleet,
        tier=np.zeros(4, np.int8),
        limits=Limits(),
        settings=PolicySettings(),
        state=state,
        now_s=1.0,
    )
    assert np.all(decision.cap_w >= topo.gpu_min_cap_w)
    assert np.all(decision.cap_w <= topo.gpu_max_cap_w)
    assert decision.cap_w[0] == 700.0
    assert decision.cap_w[2] <= 400.0


def test_a_stale_rack_with_a_cap_below_idle_gives_no_nan() -> None:
    topo = small_site(rack_w=INF, site_w=5000.0)
    fleet = busy_fleet(topo, np.zeros(4), 1.0)  # no activity anywhere
    state = DecisionState(cap_w=np.array([10.0, 10.0, 30.0, 30.0]), now_s=0.0, site_allowed_w=5e3)
    decision, _ = decide(
        topo,
        fleet,
        tier=np.zeros(4, np.int8),
        limits=Limits(),
        settings=PolicySettings(),
        state=state,
        now_s=1.0,
        stale_rack=np.array([True, False]),
    )
    assert np.all(np.isfinite(decision.sm_clock_max_mhz))
    assert np.all(np.isfinite(decision.cap_w))
    np.testing.assert_array_equal(decision.cap_w[:2], topo.gpu_min_cap_w[:2])  # never raised
    assert np.isfinite(decision.dvfs_saving_w)
