"""Every rack on its safe caps at once (the controller gone) stays under every derated limit.

The simulated agents hear commands carrying the safe caps the controller derived, their TTLs all
run out together, and the cluster runs flat out on what the agents fall back to.
"""

from __future__ import annotations

import time

import numpy as np

from controller import wire
from policies.safe_caps import configured_safe_caps, derive_safe_caps
from simulator.agents import RackAgents
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.controllers import controller_topology
from simulator.scenario import Scenario

SITE = "safe"


def flat_out_cluster() -> SimCluster:
    """8 racks of 32 H100s running one training job flat out; each rack's breaker is rated at
    0.8 of its full draw and derated to 0.8 of that, under a site contract at 0.75 of it.
    Servers' non-GPU power is held at its peak: the worst case safe caps are derived for."""
    scenario = Scenario.model_validate(
        {
            "name": "safe-caps",
            "duration_s": 600,
            "seed": 3,
            "topology": {
                "gpus": 256,
                "a100_share": 0.0,
                "racks_per_row": 4,
                "rack_rating_frac": 0.8,
                "site_limit_frac": 0.75,
                "non_gpu_idle_frac": 1.0,
            },
            "physics": {"actuation_lag_s": 0.0, "telemetry_delay_s": 0.0},
            "workloads": [
                {"kind": "training", "name": "t", "gpus": 256, "iteration_s": 2.0, "comm_frac": 0.1}
            ],
        }
    )
    return build_cluster(scenario, site=SITE)


def fall_back_together(cluster: SimCluster, safe_cap_w: np.ndarray | None) -> RackAgents:
    """Command every rack to its max caps (with `safe_cap_w`), then let every TTL run out."""
    topo = cluster.topology
    agents = RackAgents(cluster=cluster, site=SITE)  # configured safe caps: the min caps
    for rack, rack_id in enumerate(topo.racks.ids):
        rows = topo.rack_slice(rack)
        command = wire.Command(
            rack=rack_id,
            seq=1,
            issued_at_s=0.0,
            ttl_s=5.0,
            cap_w=topo.gpu_max_cap_w[rows],
            sm_clock_max_mhz=cluster.consts.max_clock_mhz[rows],
            safe_cap_w=None if safe_cap_w is None else safe_cap_w[rows],
        )
        assert agents.handle_command(rack, wire.encode_command(command))
    expired = agents.check_expiry(time.monotonic() + 10.0)
    assert expired.tolist() == list(range(topo.n_racks))
    return agents


def worst_overrun(cluster: SimCluster, seconds: float) -> dict[str, float]:
    """Run flat out; per level, the largest draw seen as a fraction of its usable limit."""
    topo = cluster.topology
    rack_row = topo.racks.parent
    worst = {"rack": 0.0, "row": 0.0, "site": 0.0}
    for _ in range(round(seconds / cluster.tick_s)):
        cluster.step()
        racks = cluster.rack_power_w
        rows = np.bincount(rack_row, weights=racks, minlength=topo.levels[2].size)
        worst["rack"] = max(worst["rack"], float(np.max(racks / topo.racks.usable_w)))
        row_usable = topo.levels[2].usable_w
        finite = np.isfinite(row_usable)
        if finite.any():
            worst["row"] = max(worst["row"], float(np.max(rows[finite] / row_usable[finite])))
        worst["site"] = max(worst["site"], cluster.site_power_w / topo.levels[-1].usable_w[0])
    return worst


def test_every_rack_on_derived_safe_caps_at_once_stays_under_every_derated_limit() -> None:
    cluster = flat_out_cluster()
    eff = cluster.params.psu_efficiency
    safe = derive_safe_caps(controller_topology(cluster.topology, eff))
    assert np.all(safe > cluster.topology.gpu_min_cap_w)  # not just the floor
    agents = fall_back_together(cluster, safe)
    worst = worst_overrun(cluster, 60.0)
    assert agents.on_safe_cap.all()
    assert np.all(agents.caps_in_force_w <= safe)  # rounded down on the wire
    np.testing.assert_allclose(agents.caps_in_force_w, safe, atol=0.1)
    assert worst["rack"] <= 1.0
    assert worst["site"] <= 1.0
    assert worst["rack"] > 0.9  # the caps are what bound it, not idle GPUs
    assert not cluster.trips


def test_the_old_fixed_share_of_max_goes_over_the_same_derated_racks() -> None:
    """The same fall-back with 0.6 of each GPU's max cap: what the derived caps replace."""
    cluster = flat_out_cluster()
    fixed = configured_safe_caps(cluster.topology, 0.6)
    fall_back_together(cluster, fixed)
    assert worst_overrun(cluster, 30.0)["rack"] > 1.0
