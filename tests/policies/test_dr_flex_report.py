"""Flex tolerances decide the DR limit; the delivery report reads recorded series."""

from __future__ import annotations

import numpy as np
import pytest

from policies.dr.events import DrEvent
from policies.dr.flex import flex_limit, gpu_floor_w
from policies.dr.report import dr_entries, event_report
from policies.errors import PolicyError


def test_floors_follow_tolerance_min_cap_and_demand() -> None:
    demand = np.array([400.0, 400.0, 400.0, 400.0, 60.0, 150.0])
    tier = np.array([0, 1, 2, 3, 3, 3])
    floors = gpu_floor_w(demand, tier, np.full(6, 100.0))
    assert floors.tolist() == [400.0, 360.0, 300.0, 200.0, 60.0, 100.0]


def test_flex_limit_within_tolerance_passes_through() -> None:
    demand = np.full(8, 400.0)
    tier = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    out = flex_limit(
        3000.0, demand_w=demand, tier=tier, min_cap_w=np.full(8, 100.0), overhead_w=500.0
    )
    # floors: 400+400+360+360+300+300+200+200 = 2520, plus 500 overhead
    assert out.achievable_w == pytest.approx(3020.0)
    assert out.limit_w == 3000.0 or out.shortfall_w > 0
    ok = flex_limit(
        3100.0, demand_w=demand, tier=tier, min_cap_w=np.full(8, 100.0), overhead_w=500.0
    )
    assert ok.feasible
    assert ok.limit_w == 3100.0
    assert ok.tier_floor_w.tolist() == [800.0, 720.0, 600.0, 400.0]


def test_flex_limit_raises_limit_and_reports_shortfall() -> None:
    demand = np.full(8, 400.0)
    tier = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    out = flex_limit(
        2500.0, demand_w=demand, tier=tier, min_cap_w=np.full(8, 100.0), overhead_w=500.0
    )
    assert out.limit_w == pytest.approx(3020.0)
    assert out.shortfall_w == pytest.approx(520.0)
    assert "Flex" in out.reason
    assert not out.feasible


def test_grid_first_meets_the_target_down_to_min_caps() -> None:
    demand = np.full(8, 400.0)
    tier = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    kw = {"demand_w": demand, "tier": tier, "min_cap_w": np.full(8, 100.0), "overhead_w": 500.0}
    out = flex_limit(2500.0, grid_first=True, **kw)  # type: ignore[arg-type]
    assert out.limit_w == 2500.0
    assert out.feasible
    floor = flex_limit(1000.0, grid_first=True, **kw)  # type: ignore[arg-type]
    assert floor.limit_w == pytest.approx(1300.0)
    assert floor.shortfall_w == pytest.approx(300.0)
    assert "minimum cap" in floor.reason


def test_bad_tolerances_and_tiers() -> None:
    with pytest.raises(PolicyError):
        gpu_floor_w([1.0], [4], [1.0])
    with pytest.raises(PolicyError):
        gpu_floor_w([1.0], [0], [1.0], (0.5, 0.1, 0.2, 0.3))


def make_event(**kw: object) -> DrEvent:
    fields: dict[str, object] = {
        "event_id": "ev",
        "source": "test",
        "notified_s": 0.0,
        "start_s": 100.0,
        "duration_s": 200.0,
        "ramp_s": 20.0,
        "recovery_s": 50.0,
        "reduction_frac": 0.25,
        "baseline_w": 1000.0,
    }
    fields.update(kw)
    return DrEvent(**fields)  # type: ignore[arg-type]


def test_report_of_a_clean_delivery() -> None:
    e = make_event()
    t = np.arange(0.0, 400.0, 1.0)
    p = np.where(t < 80, 1000.0, np.where(t < 105, 900.0, np.where(t < 300, 749.0, 1000.0)))
    work = np.tile([1.0, 1.0, 1.0, 1.0], (t.size, 1))
    got = work.copy()
    got[(t >= 100) & (t < 350), 3] = 0.5
    r = event_report(e, t, p, tier_work=got, tier_work_unconstrained=work)
    assert r.target_reached_s == pytest.approx(5.0)
    assert r.compliance == pytest.approx(195 / 200)
    assert r.shortfall_kw_max == pytest.approx(0.150)
    assert r.throughput_retained[0] == 1.0
    assert r.throughput_retained[3] == pytest.approx((20 * 1.0 + 250 * 0.5) / 270)
    d = r.as_dict()
    assert set(d) >= {
        "event_id",
        "target_reached_s",
        "compliance",
        "shortfall_kw_max",
        "throughput_retained",
    }
    assert d["throughput_retained"]["0"] == 1.0


def test_report_when_target_never_reached() -> None:
    e = make_event()
    t = np.arange(0.0, 400.0, 1.0)
    r = event_report(e, t, np.full(t.size, 900.0))
    assert r.target_reached_s is None
    assert r.compliance == 0.0
    assert r.shortfall_kw_max == pytest.approx(0.150)


def test_report_settle_requires_staying_on_target() -> None:
    e = make_event()
    t = np.arange(0.0, 400.0, 1.0)
    p = np.full(t.size, 700.0)
    p[t < 100] = 900.0
    p[(t >= 101) & (t < 110)] = 900.0  # dips on target at 100, bounces out, back at 110
    assert event_report(e, t, p).target_reached_s == 0.0
    assert event_report(e, t, p, settle_s=5.0).target_reached_s == pytest.approx(10.0)


def test_report_needs_a_baseline_and_increasing_times() -> None:
    with pytest.raises(PolicyError):
        event_report(make_event(baseline_w=None), [0.0], [1.0])
    with pytest.raises(PolicyError):
        event_report(make_event(), [0.0, 0.0], [1.0, 1.0])


def test_dr_entries_skip_events_that_never_cut() -> None:
    t = np.arange(0.0, 400.0, 1.0)
    p = np.where((t >= 100) & (t < 300), 700.0, 1000.0)
    events = [make_event(), make_event(event_id="never", baseline_w=None)]
    entries = dr_entries(events, t, p)
    assert [e["event_id"] for e in entries] == ["ev"]
    assert entries[0]["compliance"] == 1.0
    assert entries[0]["target_reached_s"] == 0.0
