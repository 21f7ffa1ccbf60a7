"""Headroom lending (`policies.lending`): the worst-case bound, the expected draw, revocation."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from policies.breaker_curve import MAGNETIC_LOAD, NO_TRIP_LOAD, TRIP_CURVE_S, trip_time_s
from policies.capping import allocate
from policies.decision import CappingSettings, LendSettings, Limits, PolicySettings
from policies.errors import PolicyError
from policies.fleet import FleetState
from policies.lending import TRIP_SHARE, LendResult, lend_step, lenders, worst_case_bounds
from policies.pipeline import decide
from policies.plan import CappingPlan
from policies.topology import Topology, generate_topology

FloatArray = NDArray[np.float64]
LEND = LendSettings(enabled=True, contract_tolerance_frac=0.02, margin_frac=0.02, margin_w=5.0)
RAISE_W = 200.0


@pytest.mark.parametrize("seconds", [0.5, 2.0, 7.0, 30.0, 50.0, 120.0, 900.0, 2000.0])
def test_load_carried_inverts_the_trip_curve(seconds: float) -> None:
    from policies.breaker_curve import load_carried_for

    load = load_carried_for(seconds)
    assert NO_TRIP_LOAD <= load <= MAGNETIC_LOAD
    if TRIP_CURVE_S[-1] <= seconds <= TRIP_CURVE_S[0]:
        assert float(trip_time_s(np.array([load]))[0]) == pytest.approx(seconds, rel=1e-9)
    # A little more load trips sooner than `seconds`.
    assert float(trip_time_s(np.array([load * 1.01]))[0]) < seconds


def _instance(
    *, site_frac: float = 0.8
) -> tuple[Topology, CappingPlan, FloatArray, FloatArray, FloatArray, FloatArray]:
    """64 GPUs under a binding site limit: a quarter idle at their min caps (lenders), the rest
    pinned at allocated caps below what they want (borrowers). Returns topology, plan, base
    caps, draw, demand, usable per level is the plan's (site cut to `site_frac`).
    """
    topo = generate_topology(64, servers_per_rack=2)
    plan = CappingPlan.build(topo)
    n = topo.n_gpus
    idle = np.arange(n) % 4 == 0
    usable = _usable(plan, site_frac)
    demand = np.where(idle, topo.gpu_min_cap_w, topo.gpu_max_cap_w)
    tier = (np.arange(n) % 3).astype(np.int8)
    base = allocate(
        plan,
        floor_w=topo.gpu_min_cap_w,
        demand_w=demand,
        max_w=topo.gpu_max_cap_w,
        tier=tier,
        usable_w=usable,
    ).cap_w
    draw = np.where(idle, 0.3 * topo.gpu_min_cap_w, base)
    return topo, plan, base, draw, demand, tier.astype(np.float64)


def _usable(plan: CappingPlan, site_frac: float) -> tuple[FloatArray, ...]:
    usable = list(plan.usable_w)
    usable[-1] = usable[-1] * site_frac
    return tuple(usable)


def _lend(
    plan: CappingPlan,
    base: FloatArray,
    draw: FloatArray,
    demand: FloatArray,
    tier: FloatArray,
    *,
    basis: FloatArray | None,
    settings: LendSettings = LEND,
    site_frac: float = 0.8,
    frozen: NDArray[np.bool_] | None = None,
    tier_floor_w: FloatArray | None = None,
    lender: NDArray[np.bool_] | None = None,
) -> LendResult:
    return lend_step(
        plan,
        cap_w=base,
        previous_w=base,
        power_w=draw,
        demand_w=demand,
        max_w=plan.topology.gpu_max_cap_w,
        tier=tier.astype(np.int8),
        usable_w=_usable(plan, site_frac),
        basis_w=basis,
        dt_s=1.0,
        raise_w=RAISE_W,
        settings=settings,
        frozen=frozen,
        tier_floor_w=tier_floor_w,
        lender=lender,
    )


def _group_sums(plan: CappingPlan, per_gpu: FloatArray) -> list[FloatArray]:
    return [s + o for s, o in zip(plan.up(plan.server_sum(per_gpu)), plan.overhead_w, strict=True)]


def test_lending_keeps_worst_case_and_expected_draw_inside_their_bounds() -> None:
    _, plan, base, draw, demand, tier = _instance()
    result = _lend(plan, base, draw, demand, tier, basis=draw)
    cap = result.cap_w
    lent = cap - base
    assert result.lent_w > 0.0
    assert lent.sum() == pytest.approx(result.lent_w, rel=1e-9)
    assert np.all(lent >= -1e-9)
    lender = demand <= base
    # Lenders keep their caps; borrowers rise no further than they ask nor than the raise rate.
    np.testing.assert_allclose(cap[lender], base[lender])
    assert np.all(cap <= np.minimum(demand, base + RAISE_W) + 1e-9)
    usable = _usable(plan, 0.8)
    bounds = worst_case_bounds(plan, usable, LEND)
    # Worst case (every GPU at its cap) within the trip-curve and contract bounds ...
    for used, bound in zip(_group_sums(plan, cap), bounds, strict=True):
        assert np.all(used <= bound * (1 + 1e-9))
    # ... and expected draw (lenders at held draw + margin, borrowers at their caps) within
    # every usable limit.
    margin = np.maximum(draw * LEND.margin_frac, LEND.margin_w)
    expected = np.where(lender, np.minimum(draw + margin, cap), cap)
    for used, limit in zip(_group_sums(plan, expected), usable, strict=True):
        assert np.all(used <= limit * (1 + 1e-9))
    # The site is where the limit binds: it is above its usable limit by what was lent.
    site_caps = _group_sums(plan, cap)[-1][0]
    assert site_caps > usable[-1][0]


def test_contract_tolerance_bounds_the_site_worst_case() -> None:
    _, plan, base, draw, demand, tier = _instance()
    tight = LendSettings(enabled=True, contract_tolerance_frac=0.001)
    result = _lend(plan, base, draw, demand, tier, basis=draw, settings=tight)
    site_caps = _group_sums(plan, result.cap_w)[-1][0]
    usable_site = _usable(plan, 0.8)[-1][0]
    assert result.lent_w > 0.0
    assert site_caps <= usable_site * 1.001 * (1 + 1e-9)
    # The tolerance binds: the lenders had more headroom than it allows.
    loose = _lend(plan, base, draw, demand, tier, basis=draw)
    assert loose.lent_w > result.lent_w


def test_breakers_bound_by_the_trip_curve_for_the_reaction_time() -> None:
    _, plan, _, _, _, _ = _instance()
    usable = _usable(plan, 0.8)
    quick = worst_case_bounds(plan, usable, LendSettings(reaction_s=1.0))
    slow = worst_case_bounds(plan, usable, LendSettings(reaction_s=60.0))
    rack = plan.topology.levels[1]
    # The rack bound is a load the curve carries for reaction_s / TRIP_SHARE, and a slower
    # controller gets less.
    load = quick[1] / rack.limit_w
    assert np.all(trip_time_s(load) >= 1.0 / TRIP_SHARE * (1 - 1e-9))
    assert np.all(slow[1] < quick[1])
    assert np.all(slow[1] >= rack.usable_w)


def test_a_rise_revokes_a_lenders_headroom_on_the_next_tick() -> None:
    _, plan, base, draw, demand, tier = _instance()
    first = _lend(plan, base, draw, demand, tier, basis=draw)
    assert first.lent_w > 0.0
    # Every lender starts drawing: by more than its margin over the basis it lent from.
    lender = demand <= base
    risen = draw.copy()
    risen[lender] = base[lender]
    second = _lend(plan, base, risen, demand, tier, basis=first.basis_w)
    assert second.lent_w == 0.0
    np.testing.assert_allclose(second.cap_w, base)
    # A rise inside the margin does not revoke.
    nudged = draw + np.where(lender, 1.0, 0.0)
    third = _lend(plan, base, nudged, demand, tier, basis=first.basis_w)
    assert third.lent_w > 0.0


def test_revocation_is_per_gpu() -> None:
    _, plan, base, draw, demand, tier = _instance()
    first = _lend(plan, base, draw, demand, tier, basis=draw)
    lender = np.flatnonzero(demand <= base)
    kept = lender[0]
    risen = draw.copy()
    risen[lender[1:]] = base[lender[1:]]
    second = _lend(plan, base, risen, demand, tier, basis=first.basis_w)
    # Only the lender that did not rise still lends, and no more than its own headroom.
    margin = max(draw[kept] * LEND.margin_frac, LEND.margin_w)
    assert 0.0 < second.lent_w <= base[kept] - draw[kept] - margin + 1e-6
    assert second.lent_w < first.lent_w


def test_cold_start_lends_nothing_and_starts_the_basis() -> None:
    _, plan, base, draw, demand, tier = _instance()
    result = _lend(plan, base, draw, demand, tier, basis=None)
    assert result.lent_w == 0.0
    assert result.cap_w is base
    np.testing.assert_allclose(result.basis_w, draw)


def test_the_basis_holds_peaks() -> None:
    _, plan, base, draw, demand, tier = _instance()
    peak = draw * 1.5
    held = _lend(plan, base, draw, demand, tier, basis=peak).basis_w
    assert np.all(held > draw)
    assert np.all(held < peak)


def test_frozen_gpus_neither_lend_nor_borrow() -> None:
    _, plan, base, draw, demand, tier = _instance()
    frozen = np.ones(base.size, dtype=np.bool_)
    result = _lend(plan, base, draw, demand, tier, basis=draw, frozen=frozen)
    assert result.lent_w == 0.0
    np.testing.assert_allclose(result.cap_w, base)


def test_only_marked_gpus_lend_and_the_rest_still_borrow() -> None:
    _, plan, base, draw, demand, tier = _instance()
    n = base.size
    free = demand <= base  # the idle quarter: under-drawn min caps, wanting nothing more
    everyone = _lend(plan, base, draw, demand, tier, basis=draw)
    # One idle GPU may lend: less is lent, and only its headroom backs it.
    one = np.zeros(n, np.bool_)
    one[np.flatnonzero(free)[0]] = True
    some = _lend(plan, base, draw, demand, tier, basis=draw, lender=one)
    assert 0.0 < some.lent_w < everyone.lent_w
    margin = np.maximum(draw * LEND.margin_frac, LEND.margin_w)
    assert some.lent_w <= float(np.maximum(base - draw - margin, 0.0)[one].sum()) + 1e-6
    # Borrowers outside the mask still borrow; lenders keep their caps.
    assert np.any(some.cap_w[~free] > base[~free])
    np.testing.assert_allclose(some.cap_w[free], base[free])
    none = _lend(plan, base, draw, demand, tier, basis=draw, lender=np.zeros(n, np.bool_))
    assert none.lent_w == 0.0
    np.testing.assert_allclose(none.cap_w, base)


def test_lenders_come_from_workload_class_names() -> None:
    names = ("<unknown>", "idle", "training", "inference")
    codes = np.array([0, 1, 2, 3, 1, 7], dtype=np.int16)  # 7: named after the table was taken
    assert lenders(names, codes, None) is None
    np.testing.assert_array_equal(
        lenders(names, codes, ("idle",)), [False, True, False, False, True, False]
    )
    np.testing.assert_array_equal(
        lenders(names, codes, ("idle", "inference")), [False, True, False, True, True, False]
    )
    np.testing.assert_array_equal(lenders(names, codes, ()), np.zeros(6, np.bool_))
    np.testing.assert_array_equal(lenders((), codes, ("idle",)), np.zeros(6, np.bool_))


def test_decide_checks_the_lender_mask_shape() -> None:
    topo = generate_topology(16, servers_per_rack=2)
    settings = PolicySettings(capping=CappingSettings(lend=LendSettings(enabled=True)))
    fleet = _fleet(topo, topo.gpu_min_cap_w.copy(), topo.gpu_max_cap_w.copy(), np.ones(16))
    with pytest.raises(PolicyError, match="lender"):
        decide(
            topo,
            fleet,
            tier=np.zeros(16, np.int8),
            limits=Limits(site_limit_w=float(topo.levels[-1].usable_w[0])),
            settings=settings,
            state=None,
            now_s=0.0,
            lender=np.ones(3, np.bool_),
        )


def _fleet(topo: Topology, draw: FloatArray, cap: FloatArray, util: FloatArray) -> FleetState:
    fleet = FleetState.empty(topo)
    fleet.power_w = draw.copy()
    fleet.cap_w = cap.copy()
    fleet.util = util
    fleet.mem_util = np.full(topo.n_gpus, 0.3)
    fleet.sm_clock_mhz = np.full(topo.n_gpus, 1e4)
    return fleet


def test_decide_lends_idle_headroom_to_pinned_gpus_and_carries_the_basis() -> None:
    topo = generate_topology(64, servers_per_rack=2)
    n = topo.n_gpus
    idle = np.arange(n) % 4 == 0
    tier = (np.arange(n) % 3).astype(np.int8)
    site = float(topo.levels[-1].usable_w[0]) * 0.7
    limits = Limits(site_limit_w=site)
    results = {}
    for enabled in (False, True):
        settings = PolicySettings(capping=CappingSettings(lend=LendSettings(enabled=enabled)))
        state = None
        cap = topo.gpu_max_cap_w.copy()
        for tick in range(6):
            # Busy GPUs draw their caps (pinned), idle ones a fraction of their min cap.
            draw = np.where(idle, 0.3 * topo.gpu_min_cap_w, cap)
            fleet = _fleet(topo, draw, cap, np.where(idle, 0.0, 1.0))
            decision, state = decide(
                topo, fleet, tier=tier, limits=limits, settings=settings, state=state, now_s=tick
            )
            cap = decision.cap_w
        assert state is not None
        results[enabled] = (cap, state)
    off, on = results[False][0], results[True][0]
    assert results[False][1].lend_basis_w is None
    assert results[True][1].lend_basis_w is not None
    assert on.sum() > off.sum()
    np.testing.assert_allclose(on[idle], off[idle])
    plan = CappingPlan.build(topo)
    site_use = _group_sums(plan, on)[-1][0]
    assert site_use <= site * (1 - CappingSettings().site_margin_frac) * 1.02 * (1 + 1e-9)


def test_lent_power_brings_borrowers_to_their_tier_floors_before_any_demand() -> None:
    # Flex 2 borrowers 30 W under their tier floors, Flex 0-1 at theirs: what is lent goes to
    # the Flex 2 floors first, then to demand in tier order. Without the floors the Flex 0
    # demand came first and left the Flex 2 GPUs under their floors.
    _, plan, base, draw, demand, tier = _instance()
    borrower = demand > base
    short = borrower & (tier == 2)
    floors = np.where(short, base + 30.0, base)

    def lent(tier_floor_w: FloatArray | None) -> FloatArray:
        return _lend(plan, base, draw, demand, tier, basis=draw, tier_floor_w=tier_floor_w).cap_w

    with_floors, without = lent(floors), lent(None)
    assert short.any()
    np.testing.assert_allclose(with_floors[short], base[short] + 30.0, rtol=1e-9)
    assert np.all(without[short] < base[short] + 30.0 - 1.0)
    # The same total is lent either way: the floors order it, they do not grow it.
    assert with_floors.sum() == pytest.approx(without.sum(), rel=1e-9)
