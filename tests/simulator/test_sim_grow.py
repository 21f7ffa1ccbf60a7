"""Growing a scenario: more GPUs, the same breakers, row limits and contract in watts."""

from __future__ import annotations

import numpy as np
import pytest

from policies.topology import Topology
from simulator.build import build_topology, full_power_w, server_models
from simulator.grid import SiteLimits
from simulator.grow import GROWN_SUFFIX, extra_servers, grow
from simulator.scenario import Scenario, load_scenario


def topology_of(scenario: Scenario) -> Topology:
    return build_topology(
        scenario.topology, scenario.physics.psu_efficiency, server_model=server_models(scenario)
    )


def site(**topology: object) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "grow",
            "duration_s": 60,
            "topology": {"gpus": 256, "site_limit_frac": 0.8, "rack_rating_frac": 0.9} | topology,
            "workloads": [
                {"kind": "inference", "name": "chat", "gpus": 64, "tier": 0},
                {"kind": "training", "name": "train", "gpus": 128, "tier": 1},
                {"kind": "training", "name": "sweep", "gpus": 32, "tier": 3, "profile": "vision"},
            ],
            "limits": {"steps": [{"at_s": 30, "site_limit_frac": 0.7, "notice_s": 10}]},
        }
    )


@pytest.mark.parametrize("name", ["oversubscribed", "steady", "phoenix", "gb200-nvl72"])
@pytest.mark.parametrize("extra", [0.05, 0.35])
def test_limits_stay_in_watts(name: str, extra: float) -> None:
    base = load_scenario(name)
    grown = grow(base, extra)
    before, after = topology_of(base), topology_of(grown)
    assert after.n_gpus >= before.n_gpus * (1.0 + extra)
    assert after.n_gpus - before.n_gpus < before.n_gpus * extra + base.topology.gpus_per_server
    rack = before.rack_level
    old_racks = before.levels[rack].limit_w
    new_racks = after.levels[rack].limit_w
    assert new_racks.size > old_racks.size
    np.testing.assert_array_equal(new_racks[: old_racks.size], old_racks)
    # Added racks carry the breaker of the base rack at the same place in the pattern.
    added = np.arange(old_racks.size, new_racks.size)
    np.testing.assert_array_equal(new_racks[added], old_racks[added % old_racks.size])
    np.testing.assert_array_equal(after.levels[rack + 1].limit_w, before.levels[rack + 1].limit_w)
    assert after.levels[-1].limit_w[0] == pytest.approx(before.levels[-1].limit_w[0], rel=1e-12)
    # The grown fleet draws more flat out: the contract is a smaller share of it.
    eff = base.physics.psu_efficiency
    assert full_power_w(after, eff) > full_power_w(before, eff)


def test_added_work_follows_the_mix() -> None:
    base = site()
    grown = grow(base, 0.5)  # 32 servers of 8 -> 16 more
    assert extra_servers(base, 0.5) == 16
    assert grown.topology.gpus == 384
    assert grown.workloads[:3] == base.workloads
    added = {w.name: w for w in grown.workloads[3:]}
    # Shares of the base's servers: chat 8, train 16, sweep 4, idle 4 of 32.
    assert {n: w.gpus for n, w in added.items()} == {
        f"chat{GROWN_SUFFIX}": 32,
        f"train{GROWN_SUFFIX}": 64,
        f"sweep{GROWN_SUFFIX}": 16,
    }
    assert added[f"sweep{GROWN_SUFFIX}"].tier == 3
    assert added[f"sweep{GROWN_SUFFIX}"].model_dump()["profile"] == "vision"
    assert grown.name == "grow+50%"


def test_shrinking_takes_each_class_by_its_share() -> None:
    base = site()
    fewer = grow(base, -0.25)  # 32 servers of 8 -> 8 fewer
    assert fewer.topology.gpus == 192
    assert fewer.name == "grow-25%"
    # Shares of the base's servers: chat 8, train 16, sweep 4, idle 4 of 32.
    assert [(w.name, w.gpus) for w in fewer.workloads] == [
        ("chat", 48),
        ("train", 96),
        ("sweep", 24),
    ]
    before, after = topology_of(base), topology_of(fewer)
    assert after.levels[-1].limit_w[0] == pytest.approx(before.levels[-1].limit_w[0], rel=1e-12)
    kept = after.levels[after.rack_level].limit_w
    np.testing.assert_array_equal(kept, before.levels[before.rack_level].limit_w[: kept.size])


def test_shrinking_drops_the_last_workloads_of_a_class_first() -> None:
    base = load_scenario("oversubscribed")  # 16 chat services of 3 servers, 16 batch of 1
    fewer = grow(base, -0.25)
    names = {w.name: w.gpus for w in fewer.workloads}
    assert "chat-15" not in names
    assert names["chat-00"] == 24
    assert sum(names.values()) == fewer.topology.gpus == 768


def test_contract_steps_become_watts() -> None:
    base = site()
    grown = grow(base, 0.25)
    [step] = grown.limits.steps
    assert step.site_limit_frac is None
    assert step.notice_s == 10
    before, after = topology_of(base), topology_of(grown)
    eff = base.physics.psu_efficiency
    limit_at = {
        "base": SiteLimits(
            base,
            base_limit_w=float(before.levels[-1].limit_w[0]),
            full_power_w=full_power_w(before, eff),
        ).contract_w(40.0),
        "grown": SiteLimits(
            grown,
            base_limit_w=float(after.levels[-1].limit_w[0]),
            full_power_w=full_power_w(after, eff),
        ).contract_w(40.0),
    }
    assert limit_at["grown"] == pytest.approx(limit_at["base"], rel=1e-12)


def test_row_limits_and_row_count_kept() -> None:
    base = site(racks_per_row=2, row_limit_frac=0.85)  # 8 racks in 4 rows
    grown = grow(base, 0.4)
    before, after = topology_of(base), topology_of(grown)
    rows = before.rack_level + 1
    assert after.levels[rows].limit_w.size == 4
    np.testing.assert_allclose(after.levels[rows].limit_w, before.levels[rows].limit_w)
    # Every row takes more racks under the same limit.
    assert np.bincount(after.levels[before.rack_level].parent).min() >= 2


def test_no_growth_is_the_base_site() -> None:
    base = load_scenario("oversubscribed")
    same = grow(base, 0.0)
    assert same.topology.gpus == base.topology.gpus
    assert same.workloads == base.workloads
    a, b = topology_of(base), topology_of(same)
    for la, lb in zip(a.levels, b.levels, strict=True):
        np.testing.assert_allclose(la.limit_w, lb.limit_w, rtol=1e-12)


def test_refuses_what_it_cannot_keep() -> None:
    with pytest.raises(ValueError, match="no server"):
        grow(site(), -1.0)
    with pytest.raises(ValueError, match="facility"):
        grow(load_scenario("summer-heatwave"), 0.1)
