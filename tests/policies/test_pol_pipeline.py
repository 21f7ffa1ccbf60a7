"""`decide` end to end: limits, stale racks, anti-chatter, site ramp and clocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decision import (
    CappingSettings,
    DecisionState,
    DvfsSettings,
    Limits,
    PolicySettings,
)
from policies.errors import PolicyError
from policies.pipeline import decide
from policies.smoothing import FLOOR_SHORT_FRAC
from policies.topology import Topology, generate_topology
from policies.workspace import DecisionWorkspace
from tests.policies.pol_instances import Instance, busy_fleet, instances

#: These tests check exact site figures; the margin kept below the site limit has its own test.
EXACT = CappingSettings(site_margin_frac=0.0)
SETTINGS = PolicySettings(capping=EXACT)


def check_limits(topo: Topology, decision) -> None:
    """Every group fits with every GPU at its cap (stale ones included: commands reach them)."""
    cap = decision.cap_w
    assert np.all(decision.cap_w >= topo.gpu_min_cap_w - 1e-9)
    assert np.all(decision.cap_w <= topo.gpu_max_cap_w + 1e-9)
    for k in range(len(topo.levels)):
        used = topo.group_sum(k, cap) + topo.overhead_under(k)
        limit = decision.limit_w[k]
        ok = used <= limit + 1e-6 * np.maximum(limit, 1.0)
        assert np.all(ok | decision.infeasible[k])
        np.testing.assert_allclose(decision.budget_w[k], used, rtol=1e-9)


@settings(max_examples=60)
@given(
    inst=instances(),
    ticks=st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(0.1, 5.0), st.sampled_from([None, 3000.0])),
        min_size=1,
        max_size=4,
    ),
    stale_first=st.booleans(),
)
def test_every_tick_respects_every_limit(inst: Instance, ticks, stale_first: bool) -> None:
    topo = inst.topology
    state: DecisionState | None = None
    now = 0.0
    stale = np.zeros(topo.n_racks, dtype=bool)
    stale[0] = stale_first
    previous = None
    workspace = DecisionWorkspace(topo.n_gpus)
    for scale, dt, site_limit in ticks:
        now += dt
        fleet = busy_fleet(topo, np.clip(inst.demand_frac * scale + 0.2, 0, 1), now)
        decision, state = decide(
            topo,
            fleet,
            tier=inst.tier,
            limits=Limits(site_limit_w=site_limit),
            settings=SETTINGS,
            state=state,
            now_s=now,
            stale_rack=stale,
            workspace=workspace,
        )
        stale_gpu = stale[topo.gpu_group[topo.rack_level]]
        check_limits(topo, decision)
        if site_limit is not None:
            assert decision.site_allowed_w <= site_limit
        if previous is not None:
            change = decision.cap_w - previous
            # Raises are rate-limited and never smaller than the deadband, but for those that
            # bring a cap short of its tier floor onto it; stale GPUs never rise.
            assert np.all(change <= SETTINGS.capping.raise_rate_w_per_s * dt + 1e-9)
            short = previous < workspace.tier_floor * (1.0 - FLOOR_SHORT_FRAC)
            rises = (change > 1e-9) & ~short
            assert np.all(change[rises] >= SETTINGS.capping.deadband_w - 1e-9)
            assert np.all(change[stale_gpu] <= 1e-9)
        previous = decision.cap_w.copy()


def test_stale_rack_keeps_its_caps_in_force_and_is_never_raised() -> None:
    topo = generate_topology(64, racks_per_row=2)  # 2 racks of 32 GPUs
    fleet = busy_fleet(topo, np.full(64, 1.0), 0.0)
    fresh, state = decide(
        topo,
        fleet,
        tier=np.zeros(64, np.int8),
        limits=Limits(),
        settings=SETTINGS,
        state=None,
        now_s=0.0,
    )
    stale = np.array([True, False])
    fleet.util[:32], fleet.mem_util[:32] = 0.1, 0.9  # last seen memory-bound
    fleet.util[32:] = 1.0  # the reporting rack wants more than before
    later, _ = decide(
        topo,
        fleet,
        tier=np.zeros(64, np.int8),
        limits=Limits(),
        settings=SETTINGS,
        state=state,
        now_s=1.0,
        stale_rack=stale,
    )
    np.testing.assert_array_equal(later.cap_w[:32], fresh.cap_w[:32])
    f_max = np.where(topo.gpu_model[:32] == 0, 1980.0, 1410.0)
    np.testing.assert_array_equal(later.sm_clock_max_mhz[:32], f_max)  # activity unknown
    rack = topo.rack_level
    # Reserved at the caps in force: a cut it might not hear would free nothing for others.
    reserved = fresh.cap_w[:32].sum() + topo.overhead_under(rack)[0]
    assert later.budget_w[rack][0] == pytest.approx(reserved)
    assert later.cap_w[32:].sum() <= fresh.cap_w[32:].sum() + 1e-6
    check_limits(topo, later)


def test_a_stale_rack_with_no_caps_known_counts_at_its_max_cap() -> None:
    topo = generate_topology(64, racks_per_row=2)
    fleet = busy_fleet(topo, np.full(64, 1.0), 0.0)
    cold, _ = decide(
        topo,
        fleet,
        tier=np.zeros(64, np.int8),
        limits=Limits(),
        settings=SETTINGS,
        state=None,
        now_s=0.0,
        stale_rack=np.array([True, False]),
    )
    rack_usable = topo.racks.usable_w[0] - topo.overhead_under(topo.rack_level)[0]
    if topo.gpu_max_cap_w[:32].sum() <= rack_usable:
        np.testing.assert_array_equal(cold.cap_w[:32], topo.gpu_max_cap_w[:32])
    check_limits(topo, cold)


@pytest.mark.parametrize("cold", [False, True])
def test_every_rack_blind_then_the_contract_steps_down_caps_fit_at_once(cold: bool) -> None:
    """All telemetry lost, then a lower limit: every blind rack is cut at once to fit it."""
    topo = generate_topology(256, racks_per_row=4)  # 8 racks of 32 GPUs in 2 rows
    fleet = busy_fleet(topo, np.full(256, 1.0), 0.0)
    tier = (np.arange(256) % 4).astype(np.int8)
    state = None
    if not cold:
        _, state = decide(
            topo, fleet, tier=tier, limits=Limits(), settings=SETTINGS, state=None, now_s=0.0
        )
        assert state is not None
    before = topo.gpu_max_cap_w.sum() if state is None else state.cap_w.sum()
    new_limit_w = 0.7 * (before + topo.overhead_under(len(topo.levels) - 1)[0])
    blind = np.ones(topo.n_racks, dtype=bool)
    decision, state = decide(
        topo,
        fleet,
        tier=tier,
        limits=Limits(site_limit_w=new_limit_w),
        settings=SETTINGS,
        state=state,
        now_s=1.0,
        stale_rack=blind,
    )
    site_use = decision.cap_w.sum() + topo.overhead_under(len(topo.levels) - 1)[0]
    assert site_use <= new_limit_w * (1 + 1e-9)
    assert site_use >= new_limit_w * (1 - 1e-6)  # cut to the limit, not below it
    check_limits(topo, decision)
    # The most flexible tier gives first, as it would with telemetry.
    by_tier = [decision.cap_w[tier == t].mean() for t in range(4)]
    assert by_tier == sorted(by_tier, reverse=True)
    # The next tick, still blind, keeps the cut caps (now in force) and raises none.
    again, _ = decide(
        topo,
        fleet,
        tier=tier,
        limits=Limits(site_limit_w=new_limit_w),
        settings=SETTINGS,
        state=state,
        now_s=2.0,
        stale_rack=blind,
    )
    np.testing.assert_allclose(again.cap_w, decision.cap_w)


def two_gpus(site_w: float) -> Topology:
    from tests.policies.pol_instances import build_topology

    return build_topology(
        [2],
        [0],
        [],
        gpu_model=[0, 0],
        server_limit_w=[np.inf],
        rack_limit_w=[np.inf],
        row_limit_w=[],
        site_limit_w=site_w,
        server_overhead_w=[0.0],
        rack_derating=[1.0],
    )


def test_raises_are_rate_limited_and_cuts_immediate() -> None:
    topo = two_gpus(1400.0)
    capping = CappingSettings(raise_rate_w_per_s=50.0, deadband_w=5.0, site_margin_frac=0.0)
    cfg = PolicySettings(capping=capping)
    fleet = busy_fleet(topo, np.array([1.0, 1.0]), 0.0)
    tier = np.array([0, 3], np.int8)
    d0, s0 = decide(
        topo,
        fleet,
        tier=tier,
        limits=Limits(site_limit_w=800.0),
        settings=cfg,
        state=None,
        now_s=0.0,
    )
    np.testing.assert_allclose(d0.cap_w, [600.0, 200.0])
    d1, s1 = decide(topo, fleet, tier=tier, limits=Limits(), settings=cfg, state=s0, now_s=2.0)
    np.testing.assert_allclose(d1.cap_w, [700.0, 300.0])  # +100 W in 2 s at most
    d2, _ = decide(
        topo, fleet, tier=tier, limits=Limits(site_limit_w=600.0), settings=cfg, state=s1, now_s=2.1
    )
    np.testing.assert_allclose(d2.cap_w, [400.0, 200.0])  # cut at once


def test_deadband_suppresses_small_changes_but_never_a_needed_cut() -> None:
    topo = two_gpus(1400.0)
    cfg = PolicySettings(
        capping=CappingSettings(deadband_w=30.0, raise_rate_w_per_s=1e6, site_margin_frac=0.0)
    )
    fleet = busy_fleet(topo, np.array([1.0, 1.0]), 0.0)
    tier = np.array([0, 0], np.int8)
    d0, s0 = decide(
        topo,
        fleet,
        tier=tier,
        limits=Limits(site_limit_w=1000.0),
        settings=cfg,
        state=None,
        now_s=0.0,
    )
    np.testing.assert_allclose(d0.cap_w, [500.0, 500.0])
    d1, s1 = decide(
        topo,
        fleet,
        tier=tier,
        limits=Limits(site_limit_w=1020.0),
        settings=cfg,
        state=s0,
        now_s=1.0,
    )
    np.testing.assert_allclose(d1.cap_w, [500.0, 500.0])  # +10 W each: under the deadband
    d2, _ = decide(
        topo, fleet, tier=tier, limits=Limits(site_limit_w=990.0), settings=cfg, state=s1, now_s=2.0
    )
    np.testing.assert_allclose(d2.cap_w, [495.0, 495.0])  # -5 W each is small, but needed


def test_site_ramp_limits_recovery_but_not_a_hard_cut() -> None:
    topo = two_gpus(1400.0)
    capping = CappingSettings(
        site_ramp_up_w_per_s=100.0, site_ramp_down_w_per_s=50.0, site_margin_frac=0.0
    )
    cfg = PolicySettings(capping=capping)
    tier = np.zeros(2, np.int8)
    state: DecisionState | None = None

    def tick(now: float, limits: Limits) -> float:
        nonlocal state
        # Both GPUs want their max and draw exactly what the last decision allowed.
        caps = state.cap_w if state is not None else np.array([700.0, 700.0])
        fleet = busy_fleet(topo, caps / 700.0, now)
        fleet.cap_w = caps.copy()
        decision, state = decide(
            topo, fleet, tier=tier, limits=limits, settings=cfg, state=state, now_s=now
        )
        assert decision.cap_w.sum() <= decision.site_allowed_w + 1e-6
        return decision.site_allowed_w

    assert tick(0.0, Limits(site_limit_w=800.0)) == 800.0
    assert tick(1.0, Limits()) == pytest.approx(900.0)  # recovery at 100 W/s
    assert tick(2.0, Limits(site_target_w=600.0)) == pytest.approx(850.0)  # a soft cut at 50 W/s
    assert tick(3.0, Limits(site_limit_w=600.0)) == pytest.approx(600.0)  # a hard limit at once


def test_idle_gpus_still_get_min_cap_and_pinned_demand_grows() -> None:
    topo = two_gpus(1400.0)
    fleet = busy_fleet(topo, np.array([0.05, 0.5]), 0.0)
    fleet.cap_w = np.array([700.0, 350.0])
    d, _ = decide(
        topo,
        fleet,
        tier=np.zeros(2, np.int8),
        limits=Limits(site_limit_w=500.0),
        settings=SETTINGS,
        state=None,
        now_s=0.0,
    )
    assert d.demand_w[0] == pytest.approx(200.0)
    # Pinned, it asks for its cap plus headroom, or what its SM activity (0.9) implies it draws
    # uncapped under the policy's model, whichever is more.
    assert d.demand_w[1] == pytest.approx(max(350.0 * 1.1, 80.0 + 620.0 * 0.9))
    assert d.cap_w[0] >= 200.0


def test_memory_bound_work_gets_a_lower_clock_and_reports_saving() -> None:
    topo = two_gpus(1400.0)
    fleet = busy_fleet(topo, np.array([0.3, 0.3]), 0.0)
    fleet.util = np.array([0.2, 0.9])
    fleet.mem_util = np.array([0.8, 0.3])
    # Flex 1: it tolerates more than the 2 % loss (Flex 0, which tolerates none, is not locked).
    d, _ = decide(
        topo,
        fleet,
        tier=np.ones(2, np.int8),
        limits=Limits(),
        settings=SETTINGS,
        state=None,
        now_s=0.0,
    )
    f_max = 1980.0
    assert d.sm_clock_max_mhz[1] == f_max
    low = d.sm_clock_max_mhz[0]
    assert low < f_max
    assert (low - 345.0) % 15.0 == 0
    assert (low / f_max) ** 0.15 >= 0.98  # within the 2 % loss under the policy's model
    assert ((low - 15.0) / f_max) ** 0.15 < 0.98  # and the lowest such step
    assert d.dvfs_saving_w > 0
    off, _ = decide(
        topo,
        fleet,
        tier=np.zeros(2, np.int8),
        limits=Limits(),
        settings=PolicySettings(capping=EXACT, dvfs=DvfsSettings(enabled=False)),
        state=None,
        now_s=0.0,
    )
    assert np.all(off.sm_clock_max_mhz == f_max)
    assert off.dvfs_saving_w == 0.0


def test_compute_bound_gpu_under_a_binding_cap_gets_a_fitting_clock() -> None:
    topo = two_gpus(1400.0)
    fleet = busy_fleet(topo, np.array([1.0, 1.0]), 0.0)
    fleet.util = np.array([1.0, 1.0])
    d, _ = decide(
        topo,
        fleet,
        tier=np.array([0, 3], np.int8),
        limits=Limits(site_limit_w=900.0),
        settings=PolicySettings(capping=EXACT, dvfs=DvfsSettings(fit_min_swing=0.0)),
        state=None,
        now_s=0.0,
    )
    np.testing.assert_allclose(d.cap_w, [700.0, 200.0])
    assert d.sm_clock_max_mhz[0] == 1980.0
    clock = d.sm_clock_max_mhz[1]
    power = 80.0 + 620.0 * (clock / 1980.0) ** 3
    assert power <= 200.0
    assert 80.0 + 620.0 * ((clock + 15.0) / 1980.0) ** 3 > 200.0


def test_fitting_clock_waits_for_a_quiet_phase_after_full_activity() -> None:
    """Steady at full activity the limiter holds the cap, so the clock stays at the max; in the
    quiet phase that follows (held activity still full) the clock is fitted for the surge."""
    topo = two_gpus(1400.0)
    fleet = busy_fleet(topo, np.array([1.0, 1.0]), 0.0)
    fleet.util = np.array([1.0, 1.0])
    tier = np.array([0, 3], np.int8)
    limits = Limits(site_limit_w=900.0)
    steady, state = decide(
        topo, fleet, tier=tier, limits=limits, settings=SETTINGS, state=None, now_s=0.0
    )
    np.testing.assert_allclose(steady.cap_w, [700.0, 200.0])
    np.testing.assert_array_equal(steady.sm_clock_max_mhz, [1980.0, 1980.0])
    fleet.util = np.array([1.0, 0.2])
    # Same instant, so the held activity is still exactly full.
    quiet, _ = decide(
        topo, fleet, tier=tier, limits=limits, settings=SETTINGS, state=state, now_s=0.0
    )
    assert quiet.cap_w[1] == pytest.approx(200.0)
    clock = quiet.sm_clock_max_mhz[1]
    assert 80.0 + 620.0 * (clock / 1980.0) ** 3 <= 200.0
    assert 80.0 + 620.0 * ((clock + 15.0) / 1980.0) ** 3 > 200.0


def test_bad_inputs_raise_policy_errors() -> None:
    topo = generate_topology(64)
    fleet = busy_fleet(topo, np.ones(64), 0.0)
    with pytest.raises(PolicyError, match="tier"):
        decide(
            topo,
            fleet,
            tier=np.full(64, 4, np.int8),
            limits=Limits(),
            settings=SETTINGS,
            state=None,
            now_s=0.0,
        )
    with pytest.raises(PolicyError, match="stale_rack"):
        decide(
            topo,
            fleet,
            tier=np.zeros(64, np.int8),
            limits=Limits(),
            settings=SETTINGS,
            state=None,
            now_s=0.0,
            stale_rack=np.zeros(5, bool),
        )


def test_warm_state_reuses_the_plan_and_stays_small() -> None:
    topo = generate_topology(2560)
    fleet = busy_fleet(topo, np.full(2560, 0.8), 0.0)
    tier = np.zeros(2560, np.int8)
    _, s0 = decide(
        topo, fleet, tier=tier, limits=Limits(), settings=SETTINGS, state=None, now_s=0.0
    )
    _, s1 = decide(topo, fleet, tier=tier, limits=Limits(), settings=SETTINGS, state=s0, now_s=1.0)
    assert s1.plan is s0.plan
    assert s1.nbytes / topo.n_gpus <= 200
