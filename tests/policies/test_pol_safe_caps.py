"""Safe caps derived from the topology fit every level with every rack on them at once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decision import Limits
from policies.safe_caps import (
    FOLLOW_STEP_FRAC,
    configured_safe_caps,
    derive_safe_caps,
    follow_site_limit,
    safe_cap_overruns,
    usable_limits,
)
from policies.topology import Topology, generate_topology
from tests.policies.pol_instances import Instance, instances


def _draw_w(topo: Topology, cap_w: np.ndarray, k: int) -> np.ndarray:
    return topo.group_sum(k, cap_w) + topo.overhead_under(k)


@settings(max_examples=150, deadline=None)
@given(
    inst=instances(),
    contract=st.one_of(st.none(), st.floats(500.0, 30000.0)),
    margin=st.sampled_from([0.0, 0.002, 0.05]),
)
def test_derived_safe_caps_fit_every_level_of_random_topologies(
    inst: Instance, contract: float | None, margin: float
) -> None:
    topo = inst.topology
    safe = derive_safe_caps(topo, site_limit_w=contract, site_margin_frac=margin)
    lo, hi = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    assert np.all(safe >= lo)
    assert np.all(safe <= hi)
    usable = usable_limits(topo, site_limit_w=contract, site_margin_frac=margin)
    overruns = {
        (o.level, o.group)
        for o in safe_cap_overruns(topo, safe, site_limit_w=contract, site_margin_frac=margin)
    }
    floors_fit = True
    for k, level in enumerate(topo.levels):
        draw = _draw_w(topo, safe, k)
        floor_draw = _draw_w(topo, lo, k)
        floors_fit &= bool(np.all(floor_draw <= usable[k] * (1 + 1e-9)))
        for g in range(level.size):
            fits = draw[g] <= usable[k][g]  # exactly: no tolerance
            if floor_draw[g] <= usable[k][g]:
                assert fits, (level.name, g, draw[g], usable[k][g])
                assert (level.name, level.ids[g]) not in overruns
            else:
                # Not even min caps fit: every GPU under it is at its min cap, and it is named.
                assert (level.name, level.ids[g]) in overruns
                assert np.all(safe[topo.gpu_group[k] == g] == lo[topo.gpu_group[k] == g])
    if floors_fit:
        assert not overruns
        # As high as the limits allow: a GPU below its max cap sits under a group left full.
        held = safe < hi - 1e-6
        tight = np.zeros(topo.n_gpus, dtype=bool)
        for k in range(len(topo.levels)):
            draw = _draw_w(topo, safe, k)
            finite = np.isfinite(usable[k])
            room = np.where(finite, usable[k], 0.0)
            full = finite & (draw >= room - 1e-6 * np.maximum(room, 1.0))
            tight |= full[topo.gpu_group[k]]
        assert np.all(tight[held])


def test_the_old_fixed_share_overruns_derated_racks_and_the_derived_caps_do_not() -> None:
    """8 racks of 32 H100s (33.6 kW nameplate each) on 28 kW breakers derated to 0.8."""
    topo = generate_topology(256, a100_share=0.0, racks_per_row=4, rack_limit_w=28000.0)
    fixed = configured_safe_caps(topo, 0.6)
    overruns = safe_cap_overruns(topo, fixed)
    assert {o.level for o in overruns} == {"rack"}
    assert len(overruns) == topo.n_racks
    assert "rack r00000: every GPU on its safe cap draws" in overruns[0].describe()
    safe = derive_safe_caps(topo)
    assert not safe_cap_overruns(topo, safe)
    # 22.4 kW usable less 11.2 kW of servers: 350 W each for 32 GPUs, just under.
    assert safe.max() == pytest.approx(350.0, rel=1e-6)
    assert safe.max() <= 350.0


def test_configured_caps_stay_inside_each_models_range() -> None:
    topo = generate_topology(16, a100_share=0.5, servers_per_rack=1)
    caps = configured_safe_caps(topo, 0.1)
    np.testing.assert_array_equal(caps, topo.gpu_min_cap_w)
    with pytest.raises(ValueError, match="shape"):
        safe_cap_overruns(topo, caps[:3])


def test_safe_caps_follow_a_lower_site_limit_in_force_and_come_back() -> None:
    topo = generate_topology(64, servers_per_rack=2)
    margin = 0.002
    contract = float(topo.levels[-1].usable_w[0]) * 0.9
    policy = derive_safe_caps(topo, site_limit_w=contract, site_margin_frac=margin)

    def follow(carried: np.ndarray, limits: Limits) -> np.ndarray | None:
        return follow_site_limit(
            topo, carried_w=carried, policy_w=policy, limits=limits, site_margin_frac=margin
        )

    # Under the contract, the policy's caps fit: nothing changes.
    assert follow(policy, Limits(site_limit_w=contract)) is None
    # A demand-response level 20 % lower (a target, as a DR event sets it): derived a step under.
    dr = contract * 0.8
    lowered = follow(policy, Limits(site_limit_w=contract, site_target_w=dr))
    assert lowered is not None
    assert np.all(lowered <= policy)
    assert safe_cap_overruns(topo, lowered, site_limit_w=dr, site_margin_frac=margin) == []
    site_draw = float(lowered.sum()) + float(topo.overhead_under(len(topo.levels) - 1)[0])
    assert site_draw == pytest.approx(dr * (1 - FOLLOW_STEP_FRAC) * (1 - margin), rel=1e-6)
    # The level ramps down a little further, within the step: kept, no re-derivation.
    assert follow(lowered, Limits(site_target_w=dr * 0.97)) is None
    # Further than the step: derived again, lower still.
    lower = follow(lowered, Limits(site_target_w=dr * 0.93))
    assert lower is not None
    assert float(lower.sum()) < float(lowered.sum())
    # The event ends: the policy's caps fit again, and come back.
    back = follow(lower, Limits(site_limit_w=contract))
    assert back is not None
    np.testing.assert_array_equal(back, policy)
    # Never above the policy's, even for a limit above the contract.
    assert follow(policy, Limits(site_limit_w=contract * 2)) is None
