"""Carbon-aware plans for Flex 2-3 work: clean hours, daily targets, tolerated slowdown."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.carbon import (
    CarbonSettings,
    PowerCurve,
    job_speed_now,
    per_tier_totals,
    plan_speed,
    track_power_frac,
)
from policies.errors import PolicyError

DAY = np.array([420.0] * 14 + [40.0] * 10)  # a dirty night and morning, a clean solar afternoon


def test_plan_runs_hard_in_clean_hours_and_slow_in_dirty_ones() -> None:
    speed = plan_speed(DAY, target_frac=0.75, min_speed=0.5)
    assert speed.mean() == pytest.approx(0.75, abs=1e-4)
    assert speed[14:].min() > speed[:14].max()
    assert np.all(speed >= 0.5)
    assert np.all(speed <= 1.0)


def test_flat_signal_spreads_the_work_evenly() -> None:
    speed = plan_speed(np.full(24, 300.0), target_frac=0.8, min_speed=0.5)
    np.testing.assert_allclose(speed, 0.8, atol=1e-4)


def test_plan_beats_the_flat_plan_on_signal_weighted_power() -> None:
    gamma = 3.0
    aware = plan_speed(DAY, target_frac=0.75, min_speed=0.5, gamma=gamma)
    blind = plan_speed(np.ones(24), target_frac=0.75, min_speed=0.5, gamma=gamma)
    assert float(np.sum(DAY * aware**gamma)) < 0.9 * float(np.sum(DAY * blind**gamma))


def test_power_law_curve_matches_the_closed_form_optimum() -> None:
    # With power = speed^3 the optimum is speed ~ signal^(-1/2) where no bound binds.
    signal = np.array([100.0, 400.0] * 12)
    speed = plan_speed(signal, target_frac=0.7, min_speed=0.2, curve=PowerCurve.power_law(3.0))
    assert speed.mean() == pytest.approx(0.7, abs=1e-4)
    assert speed[0] / speed[1] == pytest.approx(2.0, rel=0.03)


def test_curve_is_the_lower_convex_envelope_normalised_to_full_speed() -> None:
    speed = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    bumpy = np.array([0.0, 80.0, 100.0, 300.0, 400.0])  # 80 W at 0.25 lies above the chord
    curve = PowerCurve.from_table(speed, bumpy)
    assert curve.power[-1] == pytest.approx(1.0)
    assert 0.25 not in curve.speed
    assert np.all(np.diff(curve.slope) > 0)
    assert curve.power_at(0.25) == pytest.approx(0.125)
    with pytest.raises(PolicyError):
        PowerCurve.from_table([0.0, 0.5], [0.0, 1.0])  # does not reach full speed
    with pytest.raises(PolicyError):
        PowerCurve.from_table([0.0, 1.0, 1.0], [0.0, 1.0, 1.0])
    with pytest.raises(PolicyError):
        PowerCurve.from_table([0.0, 1.0], [0.0, np.inf])


def test_straight_power_curve_puts_all_it_can_in_clean_slots() -> None:
    # Energy per unit of work constant (power linear in speed above a floor): only where the work
    # is done matters, so dirty slots run at the tolerance and clean ones make up the rest.
    linear = PowerCurve.from_table(np.linspace(0.0, 1.0, 11), np.linspace(0.0, 1.0, 11))
    speed = plan_speed(DAY, target_frac=0.75, min_speed=0.5, curve=linear)
    assert speed.mean() == pytest.approx(0.75, abs=1e-3)
    np.testing.assert_allclose(speed[14:], 1.0, atol=1e-3)  # 10 clean slots flat out
    np.testing.assert_allclose(speed[:14], 8.0 / 14.0, atol=1e-3)  # the 8 slot-loads left


def test_target_out_of_reach_runs_flat_out_and_tolerance_binds_below_it() -> None:
    assert np.all(plan_speed(DAY, target_frac=1.2, min_speed=0.5) == 1.0)
    assert np.all(plan_speed(DAY, target_frac=0.3, min_speed=0.5) == 0.5)


@settings(max_examples=60, deadline=None)
@given(
    signal=st.lists(st.floats(0.0, 1000.0), min_size=1, max_size=48),
    target=st.floats(0.05, 0.99),
    tol=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
)
def test_plan_meets_target_within_tolerance(signal: list[float], target: float, tol: float) -> None:
    speed = plan_speed(np.array(signal), target_frac=target, min_speed=1.0 - tol)
    assert np.all(speed >= 1.0 - tol - 1e-12)
    assert np.all(speed <= 1.0 + 1e-12)
    assert speed.mean() >= min(max(target, 1.0 - tol), 1.0) - 1e-6


def test_a_job_behind_its_target_gets_its_budget_back() -> None:
    cfg = CarbonSettings()
    dirty_hour = np.array([420.0] + [40.0] * 3)
    on_track = job_speed_now(
        dirty_hour, owed_s=0.6 * 4 * 3600, slot_s=3600, tolerance=0.5, settings=cfg
    )
    behind = job_speed_now(
        dirty_hour, owed_s=0.99 * 4 * 3600, slot_s=3600, tolerance=0.5, settings=cfg
    )
    assert on_track == pytest.approx(0.5)
    assert behind == pytest.approx(1.0, abs=1e-3)


def test_tracking_steers_power_toward_the_plan_and_guards_the_tolerance() -> None:
    frac = np.array([0.8, 0.8, 0.5])
    nxt = track_power_frac(
        frac,
        planned_speed=np.array([0.6, 0.9, 0.5]),
        measured_speed=np.array([0.8, 0.8, 0.5]),
        min_speed=np.array([0.5, 0.5, 0.5]),
        min_frac=np.array([0.3, 0.3, 0.3]),
    )
    assert nxt[0] < 0.8  # too fast: less power
    assert nxt[1] > 0.8  # too slow: more power
    assert nxt[2] == pytest.approx(0.5 * (0.53 / 0.5) ** 3)  # under tolerance: full step at once
    full = track_power_frac(
        frac,
        planned_speed=np.ones(3),
        measured_speed=np.ones(3),
        min_speed=np.full(3, 0.5),
        min_frac=np.full(3, 0.3),
    )
    np.testing.assert_array_equal(full, 1.0)


def test_per_tier_totals_split_facility_energy_by_gpu_power() -> None:
    co2, cost = per_tier_totals(
        np.array([100.0, 300.0, 0.0, 600.0]),
        np.array([0, 2, 2, 3]),
        facility_w=2000.0,
        intensity_kg_per_mwh=400.0,
        price_per_mwh=80.0,
        dt_s=3600.0,
    )
    assert co2.sum() == pytest.approx(2e-3 * 400.0)
    assert cost.sum() == pytest.approx(2e-3 * 80.0)
    np.testing.assert_allclose(co2 / co2.sum(), [0.1, 0.0, 0.3, 0.6])


def test_bad_settings_and_signals_are_refused() -> None:
    with pytest.raises(PolicyError):
        CarbonSettings(shift_tiers=(4,))
    with pytest.raises(PolicyError):
        CarbonSettings(gamma=1.0)
    with pytest.raises(PolicyError):
        plan_speed(np.array([1.0, np.nan]), target_frac=0.5, min_speed=0.5)
    with pytest.raises(PolicyError):
        plan_speed(np.array([]), target_frac=0.5, min_speed=0.5)


def test_a_price_that_goes_negative_still_ranks_the_slots() -> None:
    price = np.array([-20.0, 0.0, 60.0, 120.0] * 6)  # $/MWh: solar surplus pays to consume
    speed = plan_speed(price, target_frac=0.7, min_speed=0.5)
    assert speed.mean() == pytest.approx(0.7, abs=1e-4)
    assert speed[0] >= speed[1] >= speed[2] >= speed[3]
    assert speed[0] > speed[3]


@settings(max_examples=40, deadline=None)
@given(
    signal=st.lists(st.floats(1.0, 1000.0), min_size=2, max_size=48),
    target=st.floats(0.55, 0.95),
    knee=st.floats(0.3, 0.9),
)
def test_plan_on_a_kinked_curve_meets_target_and_never_pays_more_than_even(
    signal: list[float], target: float, knee: float
) -> None:
    # Power linear in speed below a knee, cubic above it: the shape of the simulator's curve.
    v = np.linspace(0.0, 1.0, 101)
    curve = PowerCurve.from_table(v, np.where(v < knee, v * knee**2, v**3))
    cost = np.array(signal)
    speed = plan_speed(cost, target_frac=target, min_speed=0.5, curve=curve)
    assert np.all(speed >= 0.5 - 1e-12)
    assert np.all(speed <= 1.0 + 1e-12)
    assert speed.mean() >= target - 1e-6
    even = np.full(cost.size, target)
    assert (
        float(np.sum(cost * curve.power_at(speed)))
        <= float(np.sum(cost * curve.power_at(even))) * (1 + 1e-6) + 1e-9
    )
