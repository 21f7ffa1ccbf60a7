"""The DR event lifecycle and the ramped site budget: ramp down, hold, recover, never step up."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.dr.events import (
    DrEvent,
    EventStatus,
    baseline_w,
    lock_baselines,
    reduction_for_simple_level,
    site_budget,
)
from policies.errors import PolicyError

BASE_W = 100_000.0


def limits_at(events: list[DrEvent], times_s: np.ndarray) -> np.ndarray:
    """`site_budget(...).limit_w` at every sample time."""
    return np.array([site_budget(events, float(t)).limit_w for t in times_s])


def event(**kw: object) -> DrEvent:
    fields: dict[str, object] = {
        "event_id": "e1",
        "source": "test",
        "notified_s": 0.0,
        "start_s": 600.0,
        "duration_s": 3600.0,
        "ramp_s": 30.0,
        "recovery_s": 300.0,
        "reduction_frac": 0.25,
        "baseline_w": BASE_W,
    }
    fields.update(kw)
    return DrEvent(**fields)  # type: ignore[arg-type]


def test_ramp_hold_recovery_shape() -> None:
    e = event()
    t = np.array([0, 569, 570, 585, 600, 2000, 4199, 4200, 4350, 4500, 5000], dtype=float)
    limit = limits_at([e], t)
    assert np.isinf(limit[[0, 1, 2]]).all()  # no cut before the ramp begins
    assert limit[3] == pytest.approx(BASE_W - 0.5 * 25_000)
    assert limit[4] == pytest.approx(75_000)
    assert limit[5] == pytest.approx(75_000)
    assert limit[6] == pytest.approx(75_000)
    assert limit[7] == pytest.approx(75_000)
    assert limit[8] == pytest.approx(87_500)
    assert np.isinf(limit[9:]).all()
    assert [e.status(x) for x in (0, 580, 700, 4300, 4600)] == [
        EventStatus.PENDING,
        EventStatus.RAMPING,
        EventStatus.ACTIVE,
        EventStatus.RECOVERING,
        EventStatus.COMPLETED,
    ]


def test_absolute_kw_target_and_target_above_baseline() -> None:
    e = event(reduction_frac=None, limit_w=60_000.0)
    assert site_budget([e], 1000.0).limit_w == pytest.approx(60_000)
    above = event(reduction_frac=None, limit_w=150_000.0)
    assert math.isinf(site_budget([above], 1000.0).limit_w)


def test_late_event_cuts_on_arrival() -> None:
    # Notified 100 s after its start: the cut applies at once (a step down is safe).
    e = event(notified_s=700.0)
    assert math.isinf(site_budget([e], 699.0).limit_w)
    assert site_budget([e], 700.0).limit_w == pytest.approx(75_000)


def test_cancellation_mid_event_recovers_along_the_ramp() -> None:
    e = event().cancel(1000.0)
    assert e.status(1100.0) is EventStatus.RECOVERING
    assert site_budget([e], 1000.0).limit_w == pytest.approx(75_000)
    assert site_budget([e], 1150.0).limit_w == pytest.approx(87_500)
    assert math.isinf(site_budget([e], 1301.0).limit_w)
    assert e.status(1400.0) is EventStatus.CANCELLED


def test_cancellation_during_ramp_recovers_from_the_partial_cut() -> None:
    e = event().cancel(585.0)  # half-way down the ramp
    assert site_budget([e], 585.0).limit_w == pytest.approx(87_500)
    assert site_budget([e], 660.0).limit_w == pytest.approx(93_750)
    assert math.isinf(site_budget([e], 736.0).limit_w)


def test_cancel_before_ramp_never_cuts() -> None:
    e = event().cancel(100.0)
    assert e.status(700.0) is EventStatus.CANCELLED
    assert np.isinf(limits_at([e], np.arange(0, 6000, 10.0))).all()


def test_shallower_modification_mid_event_does_not_step_up() -> None:
    old = event()
    new = old.revise(event(reduction_frac=0.10, modification=1, notified_s=1000.0), 1000.0)
    assert new.baseline_w == BASE_W
    t = np.arange(999.0, 1400.0, 1.0)
    limit = limits_at([new], t[1:])
    assert limit[0] == pytest.approx(75_000, abs=100)
    assert np.all(np.diff(limit) <= 25_000 / 300 + 1e-6)  # rises no faster than recovery
    assert limit[-1] == pytest.approx(90_000)


def test_deeper_modification_takes_effect() -> None:
    new = event().revise(event(reduction_frac=0.5, modification=1, notified_s=1000.0), 1000.0)
    assert site_budget([new], 1000.0).limit_w == pytest.approx(50_000)


def test_overlapping_events_deepest_cut_wins() -> None:
    a = event(event_id="a", reduction_frac=0.10)
    b = event(event_id="b", reduction_frac=0.30, start_s=1800.0, duration_s=600.0)
    assert site_budget([a, b], 1000.0).event_id == "a"
    both = site_budget([a, b], 2000.0)
    assert both.event_id == "b"
    assert both.limit_w == pytest.approx(70_000)
    assert both.target_w == pytest.approx(70_000)
    # b's recovery hands back to a smoothly, and a then holds its own cut.
    t = np.arange(2390.0, 2800.0, 1.0)
    limit = limits_at([a, b], t)
    assert np.all(np.diff(limit) <= 30_000 / 300 + 1e-6)
    assert limit[-1] == pytest.approx(90_000)


def test_opted_out_events_do_not_cut() -> None:
    e = event(opted_in=False)
    assert e.status(1000.0) is EventStatus.OPTED_OUT
    assert not site_budget([e], 1000.0).active


@given(
    ramp_s=st.floats(0, 900),
    recovery_s=st.floats(1, 3600),
    frac=st.floats(0, 0.9),
    notified_s=st.floats(0, 2000),
    cancel_s=st.one_of(st.none(), st.floats(0, 6000)),
)
def test_limit_never_steps_up(
    ramp_s: float, recovery_s: float, frac: float, notified_s: float, cancel_s: float | None
) -> None:
    e = event(ramp_s=ramp_s, recovery_s=recovery_s, reduction_frac=frac, notified_s=notified_s)
    if cancel_s is not None:
        e = e.cancel(cancel_s)
    t = np.arange(0.0, 10_000.0, 0.5)
    # The event's own cut below its baseline, which `site_budget` applies wherever it is positive
    # (sampled densely here; the other tests check `site_budget` at chosen times).
    limit = BASE_W - np.maximum(e.cut_w(t, BASE_W), 0.0)
    max_rise_w = frac * BASE_W / recovery_s * 0.5
    assert np.all(np.diff(limit) <= max_rise_w + 1e-6)
    assert np.all(limit >= BASE_W * (1 - frac) - 1e-6)


def test_baseline_is_the_pre_event_average() -> None:
    t = np.arange(0.0, 1000.0, 1.0)
    p = np.where(t < 500, 80_000.0, 120_000.0)
    assert baseline_w(t, p, until_s=1000.0, window_s=300.0) == pytest.approx(120_000)
    assert baseline_w(t, p, until_s=600.0, window_s=200.0) == pytest.approx(100_000)
    assert baseline_w(t, p, until_s=5000.0, window_s=60.0) is None


def test_lock_baselines_once_and_reuse_active_baseline() -> None:
    a = event(event_id="a", baseline_w=None)
    b = event(event_id="b", baseline_w=None, start_s=2000.0, reduction_frac=0.4)
    locked = lock_baselines([a, b], 580.0, 100_000.0)
    assert locked[0].baseline_w == 100_000.0
    assert locked[1].baseline_w is None  # b's ramp has not begun
    # Later the live average is depressed by a's cut: b takes a's baseline instead.
    locked = lock_baselines(locked, 1990.0, 75_000.0)
    assert locked[0].baseline_w == 100_000.0
    assert locked[1].baseline_w == 100_000.0
    assert lock_baselines([event(baseline_w=None)], 580.0, None)[0].baseline_w is None


@pytest.mark.parametrize(("level", "frac"), [(0, 0.0), (1, 0.10), (2, 0.25), (3, 0.50)])
def test_simple_levels(level: int, frac: float) -> None:
    assert reduction_for_simple_level(level) == frac


def test_simple_level_custom_map_and_errors() -> None:
    assert reduction_for_simple_level(2.0, {1: 0.05, 2: 0.15, 3: 0.3}) == 0.15
    with pytest.raises(PolicyError):
        reduction_for_simple_level(4)
    with pytest.raises(PolicyError):
        reduction_for_simple_level(1.5)


@pytest.mark.parametrize(
    "bad",
    [
        {"reduction_frac": None},
        {"limit_w": 5.0},
        {"reduction_frac": 1.0},
        {"recovery_s": 0.0},
        {"duration_s": 0.0},
        {"start_s": math.nan},
        {"event_id": ""},
        {"baseline_w": -1.0},
    ],
)
def test_invalid_events_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        event(**bad)
