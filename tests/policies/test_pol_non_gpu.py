"""Non-GPU power budgeted as measured per rack (`policies.non_gpu`), through `decide`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import NDArray

from policies.decision import (
    CappingSettings,
    Decision,
    DecisionState,
    LendSettings,
    Limits,
    NonGpuSettings,
    PolicySettings,
)
from policies.fleet import FleetState
from policies.lending import worst_case_bounds
from policies.non_gpu import measured_overhead
from policies.pipeline import decide
from policies.plan import CappingPlan
from policies.topology import Topology, generate_topology

FloatArray = NDArray[np.float64]
PSU = 0.95
MEASURED = NonGpuSettings(measured=True, margin_frac=0.05, hold_s=60.0, psu_efficiency=PSU)
RACK = 1  # the rack level of `generate_topology`


def _topology() -> Topology:
    """4 racks of 2 H100 servers (2.8 kW non-GPU each at peak) on 12 kW usable feeds, the only
    limits that bind."""
    return generate_topology(
        64,
        servers_per_rack=2,
        a100_share=0.0,
        rack_limit_w=15_000.0,
        row_limit_w=1e9,
        site_limit_w=1e9,
    )


def _fleet(
    topo: Topology, non_gpu_frac: FloatArray, idle: NDArray[np.bool_] | None = None
) -> FleetState:
    """Every GPU pinned at its max cap (it wants more) but `idle` ones; each rack's meter reads
    its GPUs plus `non_gpu_frac` of its peak non-GPU power, through PSUs of efficiency `PSU`."""
    fleet = FleetState.empty(topo)
    fleet.power_w[:] = topo.gpu_max_cap_w
    fleet.util[:] = 1.0
    if idle is not None:
        fleet.power_w[idle] = 80.0
        fleet.util[idle] = 0.0
    fleet.mem_util[:] = 0.3
    fleet.sm_clock_mhz[:] = 1980.0
    peak = topo.overhead_under(RACK)
    gpu = topo.group_sum(RACK, fleet.power_w)
    fleet.rack_power_w[:] = (gpu + non_gpu_frac * peak) / PSU
    fleet.rack_last_seen_s[:] = 0.0
    return fleet


def _decide(
    topo: Topology,
    fleet: FleetState,
    non_gpu: NonGpuSettings,
    *,
    state: DecisionState | None = None,
    now_s: float = 0.0,
    stale_rack: NDArray[np.bool_] | None = None,
) -> tuple[Decision, DecisionState]:
    settings = PolicySettings(capping=CappingSettings(non_gpu=non_gpu))
    return decide(
        topo,
        fleet,
        tier=np.zeros(topo.n_gpus, np.int8),
        limits=Limits(),
        settings=settings,
        state=state,
        now_s=now_s,
        stale_rack=stale_rack,
    )


def _rack_caps(topo: Topology, decision: Decision) -> FloatArray:
    return topo.group_sum(RACK, decision.cap_w)


def test_a_rack_drawing_less_than_its_peak_frees_budget_for_its_gpus() -> None:
    topo = _topology()
    frac = np.array([0.5, 1.0, 1.0, 1.0])
    fleet = _fleet(topo, frac)
    peak_dec, _ = _decide(topo, fleet, NonGpuSettings(psu_efficiency=PSU))
    dec, state = _decide(topo, fleet, MEASURED)
    peak = topo.overhead_under(RACK)
    usable = topo.racks.usable_w
    # Budgeted at its peak, the rack fills its breaker with caps plus the peak.
    assert _rack_caps(topo, peak_dec) + peak == pytest.approx(usable)
    # As measured: 0.5 + 0.05 margin of the peak, so 0.45 of it more for the GPUs.
    gained = _rack_caps(topo, dec) - _rack_caps(topo, peak_dec)
    assert gained[0] == pytest.approx(0.45 * peak[0], rel=1e-6)
    np.testing.assert_allclose(gained[1:], 0.0, atol=1e-6)
    # The budget reported counts the measured non-GPU power and fits the rack's limit.
    assert dec.budget_w[RACK][0] == pytest.approx(usable[0], rel=1e-9)
    assert np.all(dec.budget_w[RACK] <= dec.limit_w[RACK] * (1 + 1e-9))
    assert state.non_gpu_w is not None
    assert state.non_gpu_w[0] == pytest.approx(0.5 * peak[0])


def test_off_by_default_and_budgets_the_peak() -> None:
    topo = _topology()
    fleet = _fleet(topo, np.full(4, 0.3))
    dec, state = _decide(topo, fleet, NonGpuSettings())
    assert state.non_gpu_w is None
    np.testing.assert_allclose(
        _rack_caps(topo, dec) + topo.overhead_under(RACK), topo.racks.usable_w
    )


def test_a_stale_rack_gets_none() -> None:
    topo = _topology()
    fleet = _fleet(topo, np.full(4, 0.5))
    stale = np.array([True, False, False, False])
    plan = CappingPlan.build(topo)
    budget = measured_overhead(
        plan, fleet, settings=MEASURED, previous_w=None, dt_s=0.0, stale_rack=stale
    )
    peak = topo.overhead_under(RACK)
    assert budget.overhead_w[RACK][0] == peak[0]
    np.testing.assert_allclose(budget.overhead_w[RACK][1:], 0.55 * peak[1:])
    # Through decide: the stale rack's budget is its kept caps plus its peak non-GPU power.
    dec, state = _decide(topo, fleet, MEASURED, stale_rack=stale)
    assert dec.budget_w[RACK][0] == pytest.approx(_rack_caps(topo, dec)[0] + peak[0])
    assert state.non_gpu_w is not None
    assert state.non_gpu_w[0] == peak[0]  # falls from the peak once it reports again


@pytest.mark.parametrize("reported", ["never", "gpus_only", "nan"])
def test_a_rack_without_a_meter_reading_is_at_its_peak(reported: str) -> None:
    topo = _topology()
    fleet = _fleet(topo, np.full(4, 0.5))
    gpu = topo.group_sum(RACK, fleet.power_w)
    if reported == "never":
        fleet.rack_power_w[0] = 0.0
        fleet.rack_last_seen_s[0] = -np.inf
    elif reported == "gpus_only":  # an agent without a rack meter reports its GPUs' sum
        fleet.rack_power_w[0] = gpu[0]
    else:
        fleet.rack_power_w[0] = np.nan
    plan = CappingPlan.build(topo)
    budget = measured_overhead(
        plan, fleet, settings=MEASURED, previous_w=None, dt_s=0.0, stale_rack=None
    )
    assert budget.overhead_w[RACK][0] == topo.overhead_under(RACK)[0]


@pytest.mark.parametrize("seed", range(5))
def test_the_estimate_never_exceeds_the_peak(seed: int) -> None:
    topo = _topology()
    plan = CappingPlan.build(topo)
    rng = np.random.default_rng(seed)
    peak = topo.overhead_under(RACK)
    previous = None
    for t in range(20):
        fleet = _fleet(topo, rng.uniform(-0.5, 3.0, size=4))
        fleet.power_w *= rng.uniform(0.2, 1.0, size=topo.n_gpus)
        budget = measured_overhead(
            plan, fleet, settings=MEASURED, previous_w=previous, dt_s=1.0, stale_rack=None
        )
        previous = budget.held_w
        for k, (got, top) in enumerate(zip(budget.overhead_w, plan.overhead_w, strict=True)):
            assert np.all(got <= top), (t, k)
            assert np.all(got >= 0.0), (t, k)
        assert np.all(budget.overhead_w[RACK] <= peak)


def test_a_rise_is_budgeted_at_once_and_a_fall_slowly() -> None:
    topo = _topology()
    peak = topo.overhead_under(RACK)
    dec, state = _decide(topo, _fleet(topo, np.full(4, 0.4)), MEASURED)
    low_caps = _rack_caps(topo, dec)
    # The very next tick sees the rise: the budget follows it at once, before any hold.
    dec, state = _decide(topo, _fleet(topo, np.full(4, 0.9)), MEASURED, state=state, now_s=1.0)
    assert dec.budget_w[RACK] == pytest.approx(topo.racks.usable_w)
    np.testing.assert_allclose(dec.budget_w[RACK] - _rack_caps(topo, dec), 0.95 * peak, rtol=1e-9)
    assert np.all(_rack_caps(topo, dec) < low_caps)
    # Falling back, the measurement is held: a second later it is still near 0.9 of the peak.
    dec, state = _decide(topo, _fleet(topo, np.full(4, 0.4)), MEASURED, state=state, now_s=2.0)
    held = 0.4 + 0.5 * np.exp(-1.0 / MEASURED.hold_s)
    np.testing.assert_allclose(
        dec.budget_w[RACK] - _rack_caps(topo, dec), (held + 0.05) * peak, rtol=1e-9
    )


def test_levels_above_the_rack_are_budgeted_from_the_racks_below() -> None:
    topo = generate_topology(64, servers_per_rack=2, racks_per_row=2, a100_share=0.0)
    fleet = _fleet(topo, np.array([0.5, 0.6, 1.0, 0.2]))
    plan = CappingPlan.build(topo)
    budget = measured_overhead(
        plan, fleet, settings=MEASURED, previous_w=None, dt_s=0.0, stale_rack=None
    )
    peak = topo.overhead_under(RACK)
    rack = np.minimum(np.array([0.55, 0.65, 1.0, 0.25]) * peak, peak)
    np.testing.assert_allclose(budget.overhead_w[RACK], rack)
    np.testing.assert_allclose(budget.overhead_w[2], [rack[:2].sum(), rack[2:].sum()])
    np.testing.assert_allclose(budget.overhead_w[3], [rack.sum()])
    # Servers are not metered apart: their own overhead stays at the peak.
    np.testing.assert_array_equal(budget.overhead_w[0], plan.overhead_w[0])


def test_lending_keeps_the_worst_case_at_the_peak() -> None:
    """With lending on too, the worst case lending bounds (every GPU at its cap) has every
    rack's non-GPU power at its peak: what the measurement freed is not lent a second time."""
    # The site (40 kW against 48 kW of rack feeds) binds, where lending's tolerance is 2 %.
    topo = generate_topology(
        64,
        servers_per_rack=2,
        a100_share=0.0,
        rack_limit_w=15_000.0,
        row_limit_w=1e9,
        site_limit_w=40_000.0,
    )
    # Half the GPUs idle (lenders), the rest pinned (borrowers).
    fleet = _fleet(topo, np.full(4, 0.5), idle=np.arange(topo.n_gpus) % 2 == 0)
    tier = np.zeros(topo.n_gpus, np.int8)
    lend = LendSettings(enabled=True)
    caps = {}
    for lending in (False, True):
        settings = PolicySettings(
            capping=CappingSettings(non_gpu=MEASURED, lend=replace(lend, enabled=lending))
        )
        state = None
        for now in (0.0, 1.0, 2.0, 3.0):
            dec, state = decide(
                topo, fleet, tier=tier, limits=Limits(), settings=settings, state=state, now_s=now
            )
        caps[lending] = dec.cap_w
    site_peak = topo.overhead_under(3)[0]
    # The measured non-GPU power is what is budgeted, below the peak.
    assert dec.budget_w[-1][0] - dec.cap_w.sum() < site_peak
    bound = worst_case_bounds(CappingPlan.build(topo), dec.limit_w, lend)[-1][0]
    worst = caps[True].sum() + site_peak
    assert worst <= max(bound, caps[False].sum() + site_peak) * (1 + 1e-9)
