from __future__ import annotations

import numpy as np
import pytest

from policies.errors import TopologyError
from policies.fleet import FleetState
from policies.gpu_models import A100_SXM4, H100_SXM5, model_code
from policies.topology import Level, Topology, generate_topology


def small_levels(n_servers: int = 2) -> list[Level]:
    return [
        Level(
            name="server",
            ids=tuple(f"s{i}" for i in range(n_servers)),
            parent=np.zeros(n_servers, np.int32),
            limit_w=np.full(n_servers, np.inf),
            derating=np.ones(n_servers),
            overhead_w=np.full(n_servers, 100.0),
        ),
        Level(
            name="rack",
            ids=("r0",),
            parent=np.zeros(1, np.int32),
            limit_w=np.array([5000.0]),
            derating=np.array([0.8]),
            overhead_w=np.array([50.0]),
        ),
        Level(
            name="site",
            ids=("site",),
            parent=np.zeros(1, np.int32),
            limit_w=np.array([4000.0]),
            derating=np.ones(1),
            overhead_w=np.zeros(1),
        ),
    ]


def test_create_derives_group_indices_and_caps() -> None:
    topo = Topology.create(
        site="site", gpu_model=[0, 0, 1, 1], gpu_server=[0, 0, 1, 1], levels=small_levels()
    )
    assert topo.n_gpus == 4
    assert topo.n_racks == 1
    assert topo.rack_level == 1
    np.testing.assert_array_equal(topo.gpu_group[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(topo.gpu_group[1], [0, 0, 0, 0])
    np.testing.assert_array_equal(topo.gpu_group[2], [0, 0, 0, 0])
    np.testing.assert_array_equal(
        topo.gpu_min_cap_w, [H100_SXM5.min_cap_w] * 2 + [A100_SXM4.min_cap_w] * 2
    )
    np.testing.assert_array_equal(topo.gpu_max_cap_w, [700, 700, 400, 400])
    assert topo.rack_slice(0) == slice(0, 4)
    assert topo.racks.usable_w[0] == pytest.approx(4000.0)


def test_overhead_accumulates_up_the_tree() -> None:
    topo = Topology.create(
        site="site", gpu_model=[0, 0, 1, 1], gpu_server=[0, 0, 1, 1], levels=small_levels()
    )
    np.testing.assert_allclose(topo.overhead_under(0), [100.0, 100.0])
    np.testing.assert_allclose(topo.overhead_under(1), [250.0])
    np.testing.assert_allclose(topo.overhead_under(2), [250.0])


def test_group_sum_matches_python_sum() -> None:
    topo = generate_topology(256, racks_per_row=2)
    values = np.arange(topo.n_gpus, dtype=np.float64)
    for k, level in enumerate(topo.levels):
        sums = topo.group_sum(k, values)
        assert sums.shape == (level.size,)
        assert sums.sum() == pytest.approx(values.sum())
    rack = topo.rack_level
    for r in range(topo.n_racks):
        assert topo.group_sum(rack, values)[r] == pytest.approx(values[topo.rack_slice(r)].sum())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gpu_server": [0, 0, 1, 5]}, "gpu_server"),
        ({"gpu_model": [0, 0, 1, 120]}, "gpu_model"),
        ({"gpu_server": [0, 0, 1]}, "gpu_server"),
        ({"rack_level": "pdu"}, "rack_level"),
        ({"rack_level": "site"}, "rack_level"),
    ],
)
def test_create_rejects_inconsistent_arrays(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "site": "site",
        "gpu_model": [0, 0, 1, 1],
        "gpu_server": [0, 0, 1, 1],
        "levels": small_levels(),
    } | kwargs
    with pytest.raises(TopologyError) as info:
        Topology.create(**args)  # type: ignore[arg-type]
    assert info.value.field == field


def test_create_rejects_racks_out_of_order() -> None:
    levels = small_levels(3)
    levels[1] = Level(
        name="rack",
        ids=("r0", "r1"),
        parent=np.zeros(2, np.int32),
        limit_w=np.array([5000.0, 5000.0]),
        derating=np.ones(2),
        overhead_w=np.zeros(2),
    )
    levels[0] = Level(
        name="server",
        ids=("s0", "s1", "s2"),
        parent=np.array([0, 1, 0], np.int32),
        limit_w=np.full(3, np.inf),
        derating=np.ones(3),
        overhead_w=np.zeros(3),
    )
    with pytest.raises(TopologyError, match="ordered by rack"):
        Topology.create(site="x", gpu_model=[0, 0, 0], gpu_server=[0, 1, 2], levels=levels)


def test_create_rejects_bad_derating() -> None:
    levels = small_levels()
    bad = levels[1]
    levels[1] = Level(
        name=bad.name,
        ids=bad.ids,
        parent=bad.parent,
        limit_w=bad.limit_w,
        derating=np.array([1.5]),
        overhead_w=bad.overhead_w,
    )
    with pytest.raises(TopologyError) as info:
        Topology.create(site="s", gpu_model=[0, 0, 1, 1], gpu_server=[0, 0, 1, 1], levels=levels)
    assert info.value.field == "rack.derating"


def test_generate_topology_shapes() -> None:
    topo = generate_topology(10_240)
    assert [lv.name for lv in topo.levels] == ["server", "rack", "row", "site"]
    assert topo.n_gpus == 10_240
    assert topo.levels[0].size == 1280
    assert topo.n_racks == 320
    assert topo.level("row").size == 16
    assert set(np.unique(topo.gpu_model)) == {0, 1}
    assert np.all(topo.rack_sizes() == 32)


def test_model_code_errors_name_the_known_models() -> None:
    assert model_code("A100-SXM4") == 1
    with pytest.raises(TopologyError, match="H100-SXM5"):
        model_code("Z9000")


def test_fleet_state_starts_stale_and_worst_case() -> None:
    topo = generate_topology(64)
    fleet = FleetState.empty(topo)
    assert fleet.stale_racks(now_s=0.0, timeout_s=5.0).all()
    np.testing.assert_array_equal(fleet.power_w, topo.gpu_max_cap_w)
    snap = fleet.copy()
    fleet.power_w[:] = 1.0
    assert snap.power_w[0] == topo.gpu_max_cap_w[0]
    fleet.rack_last_seen_s[0] = 10.0
    stale = fleet.stale_racks(now_s=12.0, timeout_s=5.0)
    assert not stale[0]
    assert stale[1:].all()
    assert fleet.nbytes > 0
