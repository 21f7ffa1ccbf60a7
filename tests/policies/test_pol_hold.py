"""Demand peak-hold, ceiling-pinned GPUs and the site margin: what `decide` carries over."""

from __future__ import annotations

import numpy as np
import pytest

from policies.decision import CappingSettings, DvfsSettings, Limits, PolicySettings
from policies.demand import hold_demand
from policies.pipeline import decide
from policies.topology import generate_topology
from tests.policies.pol_instances import busy_fleet


def test_hold_keeps_peaks_and_decays_toward_the_draw() -> None:
    previous = np.array([700.0, 300.0])
    current = np.array([200.0, 500.0])
    held = hold_demand(current, previous, dt_s=10.0, hold_s=10.0)
    assert held[0] == pytest.approx(200.0 + 500.0 * np.exp(-1.0))
    assert held[1] == 500.0  # rises count at once
    assert hold_demand(current, previous, dt_s=1.0, hold_s=0.0) is current


def _swing(hold_s: float) -> tuple[float, float]:
    """Tier 0 (first half of the fleet) dips for one tick as if in all-reduce, then resumes.

    `hold_s` is both holds' time constant: the demand's, and the activity's that the tier floors
    are sized from (without either, the dip's low draw and activity both read as lost demand).

    Returns the caps tier 0 and tier 3 hold on the dip tick, as sums. Units: W.
    """
    topo = generate_topology(
        64, racks_per_row=2, a100_share=0.0, site_limit_w=30_000.0, server_overhead_w=0.0
    )
    tier = np.where(np.arange(64) < 32, 0, 3).astype(np.int8)
    settings = PolicySettings(
        capping=CappingSettings(demand_hold_s=hold_s),
        dvfs=DvfsSettings(enabled=False, activity_hold_s=hold_s),
    )
    state = None
    for t in range(5):
        fleet = busy_fleet(topo, np.full(64, 1.0), float(t))
        decision, state = decide(
            topo,
            fleet,
            tier=tier,
            limits=Limits(),
            settings=settings,
            state=state,
            now_s=float(t),
        )
        fleet.cap_w[:] = decision.cap_w
    dip = busy_fleet(topo, np.where(tier == 0, 0.3, 1.0), 5.0)
    dip.util[tier == 0] = 0.2  # all-reduce: the SMs wait on the network
    dip.cap_w[:] = decision.cap_w
    decision, _ = decide(
        topo, dip, tier=tier, limits=Limits(), settings=settings, state=state, now_s=5.0
    )
    return float(decision.cap_w[tier == 0].sum()), float(decision.cap_w[tier == 3].sum())


def test_a_communication_dip_does_not_hand_flex0_power_to_flex3() -> None:
    held_top, held_low = _swing(hold_s=10.0)
    bare_top, bare_low = _swing(hold_s=0.0)
    # Without the hold, the dip shrinks Flex 0's caps and Flex 3 takes the power.
    assert bare_top < held_top - 1000.0
    assert bare_low > held_low + 1000.0
    # With it, Flex 0 keeps nearly all it had (the hold decays by e^-0.1 in one second).
    assert held_top >= 32 * 700.0 * 0.9


def test_a_gpu_held_by_its_clock_ceiling_counts_as_pinned() -> None:
    topo = generate_topology(32, racks_per_row=1, a100_share=0.0, site_limit_w=15_000.0)
    tier = np.zeros(32, np.int8)
    # Clocks fitted in steady compute too, so the first tick already sets binding ceilings.
    settings = PolicySettings(dvfs=DvfsSettings(fit_min_swing=0.0))
    fleet = busy_fleet(topo, np.full(32, 1.0), 0.0)
    first, state = decide(
        topo, fleet, tier=tier, limits=Limits(), settings=settings, state=None, now_s=0.0
    )
    assert np.all(first.sm_clock_max_mhz < 1980.0)  # caps bind: clocks fit them
    # The GPUs now run at that ceiling, drawing well under their caps.
    fleet.cap_w[:] = first.cap_w
    fleet.sm_clock_mhz[:] = first.sm_clock_max_mhz
    fleet.power_w[:] = first.cap_w * 0.8
    second, _ = decide(
        topo, fleet, tier=tier, limits=Limits(), settings=settings, state=state, now_s=1.0
    )
    # Still pinned: demand is at least the cap, not the lower draw.
    assert np.all(second.demand_w >= first.cap_w - 1e-9)


def test_site_margin_leaves_room_below_the_hard_limit() -> None:
    topo = generate_topology(64, racks_per_row=2, site_limit_w=30_000.0)
    fleet = busy_fleet(topo, np.full(64, 1.0), 0.0)
    tier = np.zeros(64, np.int8)
    none = PolicySettings(capping=CappingSettings(site_margin_frac=0.0))
    plain, _ = decide(topo, fleet, tier=tier, limits=Limits(), settings=none, state=None, now_s=0.0)
    default, _ = decide(
        topo, fleet, tier=tier, limits=Limits(), settings=PolicySettings(), state=None, now_s=0.0
    )
    # By default a revenue meter's accuracy class, 0.2 %, is kept free.
    assert default.site_allowed_w == pytest.approx(plain.site_allowed_w * 0.998)
    margin = PolicySettings(capping=CappingSettings(site_margin_frac=0.02))
    kept, _ = decide(
        topo, fleet, tier=tier, limits=Limits(), settings=margin, state=None, now_s=0.0
    )
    assert kept.site_allowed_w == pytest.approx(plain.site_allowed_w * 0.98)
    assert kept.budget_w[-1][0] <= plain.site_allowed_w * 0.98 + 1e-6
