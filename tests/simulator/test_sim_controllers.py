"""Built-in controllers: what the static one promises, and the DC-side view of the limits."""

from __future__ import annotations

import numpy as np
import pytest

from policies.decision import Limits
from policies.fleet import FleetState
from policies.topology import Topology
from simulator.build import build_topology
from simulator.controllers import NoController, StaticController, controller_topology
from simulator.scenario import TopologySpec


def topology() -> Topology:
    spec = TopologySpec(gpus=256, a100_share=0.5, site_limit_frac=0.8, rack_rating_frac=0.9)
    return build_topology(spec, 0.95)


def test_controller_topology_scales_every_rating_by_psu_efficiency() -> None:
    topo = topology()
    dc = controller_topology(topo, 0.95)
    for real, seen in zip(topo.levels, dc.levels, strict=True):
        np.testing.assert_allclose(seen.limit_w, real.limit_w * 0.95)
        np.testing.assert_array_equal(seen.overhead_w, real.overhead_w)


@pytest.mark.parametrize("site_limit_w", [None, 150_000.0, 120_000.0])
def test_static_caps_fit_every_limit_at_full_load(site_limit_w: float | None) -> None:
    topo = controller_topology(topology(), 0.95)
    ctl = StaticController(topo)
    fleet = FleetState.empty(topo)
    stale = np.zeros(topo.n_racks, dtype=bool)
    act = ctl.decide(fleet, Limits(site_limit_w=site_limit_w), 0.0, stale)
    assert act is not None
    caps, _ = act
    assert np.all(caps >= topo.gpu_min_cap_w - 1e-9)
    assert np.all(caps <= topo.gpu_max_cap_w + 1e-9)
    for k, level in enumerate(topo.levels):
        used = topo.group_sum(k, caps) + topo.overhead_under(k)
        usable = level.usable_w
        if k == len(topo.levels) - 1 and site_limit_w is not None:
            usable = np.minimum(usable, site_limit_w)
        assert np.all(used <= usable * (1 + 1e-9) + 1e-6), level.name
    # One fraction for everybody: the same share of each GPU's range.
    share = (caps - topo.gpu_min_cap_w) / (topo.gpu_max_cap_w - topo.gpu_min_cap_w)
    assert np.ptp(share) < 1e-9


def test_static_falls_to_min_caps_when_no_fraction_fits() -> None:
    topo = controller_topology(topology(), 0.95)
    stale = np.zeros(topo.n_racks, dtype=bool)
    act = StaticController(topo).decide(
        FleetState.empty(topo), Limits(site_limit_w=50_000.0), 0.0, stale
    )
    assert act is not None
    np.testing.assert_array_equal(act[0], topo.gpu_min_cap_w)


def test_no_controller_leaves_the_gpus_alone() -> None:
    topo = topology()
    act = NoController().decide(
        FleetState.empty(topo), Limits(), 0.0, np.zeros(topo.n_racks, dtype=bool)
    )
    assert act is None
