"""The per-tick DR step: baseline from recorded power, deepest cut, Flex floors for the core."""

from __future__ import annotations

import numpy as np
import pytest

from policies.dr.events import DrEvent
from policies.dr.session import DrSession, FlexInputs


def test_step_locks_baseline_then_limits_and_floors() -> None:
    session = DrSession(baseline_window_s=60.0)
    for k in range(120):
        session.record(float(k), 200_000.0 if k >= 60 else 100_000.0)
    session.record(120.0, float("nan"))  # ignored
    assert session.last_power_w == 200_000.0
    event = DrEvent(
        event_id="p",
        source="sim",
        notified_s=0.0,
        start_s=150.0,
        duration_s=600.0,
        ramp_s=30.0,
        recovery_s=60.0,
        reduction_frac=0.25,
    )
    early = session.step([event], 100.0)
    assert early.site_limit_w is None
    assert early.events[0].baseline_w is None
    tick = session.step([event], 120.0)
    assert tick.events[0].baseline_w == pytest.approx(200_000.0)
    assert tick.site_limit_w is None  # the ramp just began: no cut yet
    assert session.step(tick.events, 135.0).limit_w == pytest.approx(175_000.0)
    held = session.step(tick.events, 200.0)
    assert held.site_limit_w == pytest.approx(150_000.0)
    flex = FlexInputs(
        demand_w=np.full(400, 400.0),
        tier=np.zeros(400, dtype=np.int8),
        min_cap_w=np.full(400, 100.0),
        overhead_w=40_000.0,
    )
    protected = session.step(tick.events, 200.0, flex)
    assert protected.limit_w == pytest.approx(200_000.0)  # Flex 0 everywhere: nothing to give
    assert protected.shortfall_w == pytest.approx(50_000.0)
    assert protected.gpu_floor_w is not None
    assert np.all(protected.gpu_floor_w == 400.0)


def test_floors_come_from_pre_event_demand_not_capped_demand() -> None:
    session = DrSession(baseline_window_s=60.0)
    for k in range(60):
        session.record(float(k), 100_000.0)
    event = DrEvent(
        event_id="p",
        source="sim",
        notified_s=0.0,
        start_s=60.0,
        duration_s=600.0,
        recovery_s=60.0,
        reduction_frac=0.5,
    )
    tier = np.full(100, 3, dtype=np.int8)

    def flex(demand_w: float) -> FlexInputs:
        return FlexInputs(
            demand_w=np.full(100, demand_w),
            tier=tier,
            min_cap_w=np.full(100, 100.0),
            overhead_w=40_000.0,
        )

    before = session.step([event], 59.0, flex(600.0))  # no cut yet: demand remembered
    assert before.flex is None
    first = session.step(before.events, 60.0, flex(600.0))
    # Flex 3 floors: 0.5 x 600 W x 100 = 30 kW, + 40 kW overhead = 70 kW > 50 kW asked.
    assert first.limit_w == pytest.approx(70_000.0)
    # Capped GPUs now report less demand; the floors must not follow it down.
    later = session.step(first.events, 120.0, flex(320.0))
    assert later.limit_w == pytest.approx(70_000.0)
    assert later.gpu_floor_w is not None
    assert np.all(later.gpu_floor_w == 300.0)
