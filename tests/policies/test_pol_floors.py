"""Flex tolerance floors: every tier is kept at its floor first, then strict tiers above it.

The vectorized fill with tier floors must equal the slow reference on random nested limits, and on
one shared limit the semantics read directly: floors are kept whenever they all fit, no tier gets
more than its floor while a higher one is short of demand, and where floors do not fit the most
tolerant tier gives first.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.capping import allocate
from policies.decision import CappingSettings, Limits, PolicySettings
from policies.dvfs import BETA_POWER
from policies.errors import PolicyError
from policies.fleet import FleetState
from policies.floors import (
    FLOOR_ALPHA,
    FLOOR_KNEE,
    FloorHold,
    activity_floor_caps,
    tier_floor_caps,
)
from policies.gpu_models import model_table
from policies.pipeline import decide
from policies.plan import CappingPlan
from policies.reference import allocate_reference
from policies.tiers import N_TIERS
from tests.policies.pol_instances import Instance, instances
from tests.policies.test_pol_capping import assert_invariants, one_rack

REL = 1e-6
TOL = np.array([0.0, 0.10, 0.25, 0.50])


def g_of_speed(speed: np.ndarray) -> np.ndarray:
    """Share of the dynamic power at which the floor model runs at `speed`."""
    x = speed ** (1.0 / FLOOR_ALPHA)
    return x * np.maximum(x, FLOOR_KNEE) ** (BETA_POWER - 1.0)


def speed_of_g(g: np.ndarray) -> np.ndarray:
    """Inverse of `g_of_speed`."""
    x = np.where(g <= FLOOR_KNEE**BETA_POWER, g / FLOOR_KNEE**2, np.cbrt(g))
    return x**FLOOR_ALPHA


def floors_of(inst: Instance, mid_frac: np.ndarray) -> tuple[np.ndarray, ...]:
    topo = inst.topology
    lo, hi = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    demand = lo + inst.demand_frac * (hi - lo)
    return lo, hi, demand, lo + mid_frac * (demand - lo)


@settings(max_examples=300)
@given(inst=instances(), data=st.data(), scale=st.sampled_from([1.0, 0.6, 0.3, 0.05]))
def test_fill_with_floors_equals_reference(inst: Instance, data: st.DataObject, scale: float):
    n = inst.topology.n_gpus
    frac = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
    mid_frac = np.asarray(data.draw(st.lists(frac, min_size=n, max_size=n)))
    lo, hi, demand, mid = floors_of(inst, mid_frac)
    usable = tuple(lv.usable_w * scale for lv in inst.topology.levels)
    args = {"floor_w": lo, "demand_w": demand, "max_w": hi, "tier": inst.tier, "usable_w": usable}
    fast = allocate(CappingPlan.build(inst.topology), tier_floor_w=mid, **args)
    ref_cap, ref_infeasible = allocate_reference(inst.topology, tier_floor_w=mid, **args)
    np.testing.assert_allclose(fast.cap_w, ref_cap, rtol=REL, atol=1e-6)
    for a, b in zip(fast.infeasible, ref_infeasible, strict=True):
        np.testing.assert_array_equal(a, b)
    assert_invariants(inst.topology, fast.cap_w, usable, fast.infeasible)
    for k in range(len(usable)):
        used = inst.topology.group_sum(k, fast.cap_w) + inst.topology.overhead_under(k)
        np.testing.assert_allclose(fast.used_w[k], used, rtol=1e-9)
    # Floors are kept wherever every group holds them all.
    fits = all(
        np.all(
            inst.topology.group_sum(k, mid) + inst.topology.overhead_under(k)
            <= usable[k] * (1 + 1e-9) + 1e-9
        )
        for k in range(len(usable))
    )
    if fits:
        assert np.all(fast.cap_w >= mid - 1e-6)


@st.composite
def shared_limit(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    """Up to 12 H100s under one site limit: demand, tier, tier floor and the limit. Units: W."""
    n = draw(st.integers(1, 12))
    demand = np.asarray(draw(st.lists(st.floats(200.0, 700.0), min_size=n, max_size=n)))
    tier = np.asarray(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int8)
    keep = g_of_speed(1.0 - TOL[tier])
    idle = model_table("idle_w")[0]
    mid = np.maximum(idle + (demand - idle) * keep, 200.0)
    site = draw(st.floats(200.0 * n, 700.0 * n + 100.0))
    return demand, tier, mid, np.array([site])


@settings(max_examples=300)
@given(case=shared_limit())
def test_one_limit_floors_first_then_strict_tiers(case: tuple[np.ndarray, ...]) -> None:
    demand, tier, mid, site = case
    topo = one_rack(demand.size, float(site[0]))
    lo, hi = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    usable = (*(lv.usable_w for lv in topo.levels[:-1]), site)
    cap = allocate(
        CappingPlan.build(topo),
        floor_w=lo,
        demand_w=demand,
        max_w=hi,
        tier=tier,
        usable_w=usable,
        tier_floor_w=mid,
    ).cap_w
    eps = 1e-6
    assert cap.sum() <= site[0] * (1 + 1e-9)
    if mid.sum() <= site[0]:
        assert np.all(cap >= mid - eps), "a floor was broken although all floors fit"
    for a in range(N_TIERS):
        for b in range(a + 1, N_TIERS):
            a_short = np.any((tier == a) & (cap < demand - eps))
            b_above = np.any((tier == b) & (cap > mid + eps))
            assert not (a_short and b_above), f"Flex {b} above its floor, Flex {a} short"
            a_below = np.any((tier == a) & (cap < mid - eps))
            b_above_min = np.any((tier == b) & (cap > lo + eps))
            assert not (a_below and b_above_min), f"Flex {a} under its floor, Flex {b} above min"


def test_tier_floor_is_the_tolerated_speed_under_the_policy_model() -> None:
    topo = one_rack(8, 1e9)
    plan = CappingPlan.build(topo)
    activity = np.array([1.0, 1.0, 1.0, 1.0, 0.8, 0.7, 0.5, 0.9])
    tier = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int8)
    lo, hi = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    demand = lo.copy()  # held at the min cap: the demand estimate knows nothing more
    floor = tier_floor_caps(
        plan,
        demand_w=demand,
        activity=activity,
        floor_w=lo,
        max_w=hi,
        tier=tier,
        tolerances=tuple(TOL),
    )
    idle = plan.idle_w
    uncapped = idle + (hi - idle) * activity
    speed = speed_of_g((floor - idle) / (uncapped - idle))
    binding = floor > lo  # otherwise held up by the min cap
    assert binding.sum() >= 6
    np.testing.assert_allclose(speed[binding], 1.0 - TOL[tier][binding], rtol=1e-12)
    np.testing.assert_allclose(floor[tier == 0], uncapped[tier == 0])
    np.testing.assert_allclose(demand, uncapped)  # raised to the draw the activity implies
    assert np.all(speed[~binding] >= 1.0 - TOL[tier][~binding])
    # A stage after the core sizes the same floors from the activity alone.
    after = activity_floor_caps(
        idle_w=idle, dynamic_w=hi - idle, activity=activity, tier=tier, tolerances=tuple(TOL)
    )
    np.testing.assert_allclose(np.maximum(after, lo), floor, rtol=1e-12)
    # Requested floors raise it, never above the max cap.
    raised = tier_floor_caps(
        plan,
        demand_w=hi.copy(),
        activity=activity,
        floor_w=lo,
        max_w=hi,
        tier=tier,
        tolerances=tuple(TOL),
        requested_w=np.full(8, 1000.0),
    )
    np.testing.assert_allclose(raised, hi)


def run_decide(tolerances: tuple[float, float, float, float], site_w: float) -> np.ndarray:
    """One cold decision for 8 busy H100s (two per tier) under a site limit: the caps. Units: W."""
    topo = one_rack(8, site_w)
    fleet = FleetState.empty(topo)
    fleet.power_w = np.full(8, 690.0)
    fleet.cap_w = np.full(8, 700.0)
    fleet.util = np.full(8, 0.95)
    fleet.mem_util = np.full(8, 0.3)
    fleet.rack_last_seen_s[:] = 0.0
    settings_ = PolicySettings(capping=CappingSettings(flex_tolerances=tolerances))
    decision, _ = decide(
        topo,
        fleet,
        tier=np.repeat(np.arange(4), 2).astype(np.int8),
        limits=Limits(),
        settings=settings_,
        state=None,
        now_s=0.0,
    )
    return decision.cap_w


def test_decide_keeps_every_tier_at_its_floor_before_strict_tiers() -> None:
    # 4000 W for 8 H100s demanding 700 W: strict tiers leave Flex 2 and 3 at the min cap (Flex 0
    # and 1 take 2800 W, Flex 2 the remaining 400 W above the four 200 W mins).
    strict = run_decide((0.0, 0.0, 0.0, 0.0), 4000.0)
    np.testing.assert_allclose(strict[6:], 200.0)
    floored = run_decide((0.0, 0.10, 0.25, 0.50), 4000.0)
    idle = model_table("idle_w")[0]
    mid = idle + (700.0 - idle) * 0.95 * g_of_speed(1.0 - TOL)
    for t in range(N_TIERS):
        assert np.all(floored[2 * t : 2 * t + 2] >= max(mid[t], 200.0) - 1e-6)
    np.testing.assert_allclose(floored[:2], 700.0)  # Flex 0's floor is its demand
    assert floored.sum() <= 4000.0 * (1 + 1e-9)
    # Above the floors, strict order: Flex 1 reaches its demand before Flex 2 leaves its floor.
    assert floored[2] > floored[4]


def test_decide_rejects_floors_of_the_wrong_length() -> None:
    topo = one_rack(2, 1e6)
    fleet = FleetState.empty(topo)
    with pytest.raises(PolicyError):
        decide(
            topo,
            fleet,
            tier=np.zeros(2, np.int8),
            limits=Limits(gpu_floor_w=np.ones(3)),
            settings=PolicySettings(),
            state=None,
            now_s=0.0,
        )


@pytest.mark.parametrize("members", ["some", "all", "none"])
def test_tier_floors_are_the_same_block_by_block(
    monkeypatch: pytest.MonkeyPatch, members: str
) -> None:
    """Blocks that split the fleet unevenly give the floors, the raised demand and the held
    draw of one block, to the bit."""
    n = 37
    topo = one_rack(n, 1e9)
    plan = CappingPlan.build(topo)
    rng = np.random.default_rng(7)
    lo, hi = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    raw = rng.uniform(lo, hi * 1.05).clip(lo, hi)
    raw[::5] = hi[::5]  # clipped at the max cap
    member = {
        "some": rng.random(n) < 0.5,
        "all": np.ones(n, np.bool_),
        "none": np.zeros(n, np.bool_),
    }[members]
    inputs = {
        "activity": rng.uniform(0.0, 1.0, n),
        "floor_w": lo,
        "max_w": hi,
        "tier": rng.integers(0, N_TIERS, n).astype(np.int8),
        "tolerances": tuple(TOL),
        "requested_w": np.where(rng.random(n) < 0.2, rng.uniform(lo, hi), 0.0),
        "headroom": (0.05, 5.0),
        "held_back": rng.random(n) < 0.3,
        "raw_w": raw,
    }
    previous = rng.uniform(lo, hi)
    keep = np.where(member, 0.99, 0.7)

    def floors(block: int) -> tuple[np.ndarray, ...]:
        monkeypatch.setattr("policies.floors.FLOOR_BLOCK", block)
        demand = raw * 1.05
        held = FloorHold(previous_w=previous, keep=keep, out=np.empty(n), with_draw=member)
        floor = tier_floor_caps(plan, demand_w=demand, held=held, **inputs)
        return floor.copy(), demand, held.out

    whole = floors(1 << 20)
    for block in (1, 4, 16):
        for got, want in zip(floors(block), whole, strict=True):
            assert got.tobytes() == want.tobytes()
