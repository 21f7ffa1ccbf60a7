"""The daemon's view of demand response: limits per tick, MQTT routing, status for metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from controller.config import DemandResponseSection, ScheduledEvent
from controller.grid.hook import GridHook
from policies.decision import Decision, Limits
from policies.topology import generate_topology

T0 = 1_764_300_000.0


def decision_for(demand_w: np.ndarray) -> Decision:
    n = demand_w.size
    return Decision(
        cap_w=np.full(n, 400.0),
        sm_clock_max_mhz=np.full(n, 1410.0),
        demand_w=demand_w,
        tier=np.zeros(n, dtype=np.int8),
        budget_w=(),
        limit_w=(),
        infeasible=(),
        site_allowed_w=1e9,
        dvfs_saving_w=0.0,
    )


def test_hook_folds_the_dr_limit_into_the_site_limit(tmp_path: Path) -> None:
    topo = generate_topology(64, a100_share=1.0)
    section = DemandResponseSection(
        store_path=Path("ev.sqlite"),
        baseline_window_s=60.0,
        events=[ScheduledEvent(id="peak", start=T0 + 120, duration_s=600, reduction_frac=0.25)],
    )
    now = [T0]
    hook = GridHook(section, site="phx", clock=lambda: now[0], base_dir=tmp_path)
    assert (tmp_path / "ev.sqlite").exists()
    assert hook.topics == ["rheostat/v1/phx/grid/event", "rheostat/v1/phx/grid/event/+"]
    tier = np.repeat(np.arange(4, dtype=np.int8), 16)
    base = Limits(site_limit_w=50_000.0)
    for k in range(120):
        lim = hook.limits(
            base, now_s=T0 + k, site_power_w=40_000.0, topology=topo, tier=tier, decision=None
        )
        assert lim.site_limit_w is not None
        if k <= 90:  # the scheduled ramp begins 30 s before the start
            assert lim.site_limit_w == 50_000.0
        else:
            assert lim.site_limit_w == pytest.approx(40_000.0 - 10_000.0 * (k - 90) / 30)
    assert hook.status().baseline_w == pytest.approx(40_000.0)
    decision = decision_for(np.full(64, 350.0))
    held = hook.limits(
        base, now_s=T0 + 300, site_power_w=40_000.0, topology=topo, tier=tier, decision=decision
    )
    # GPU draw 64 x 350 = 22.4 kW, overhead 17.6 kW; floors 16 x (350 + 315 + 262.5 + 175)
    # = 17.64 kW; achievable 35.24 kW > 30 kW target: the Flex policy raises the limit.
    assert held.site_limit_w == pytest.approx(35_240.0)
    assert held.gpu_floor_w is not None
    status = hook.status()
    assert status.active
    assert status.target_w == pytest.approx(30_000.0)
    assert status.shortfall_w == pytest.approx(10_000.0)
    assert status.baseline_w == pytest.approx(40_000.0)
    after = hook.limits(
        base, now_s=T0 + 2000, site_power_w=40_000.0, topology=topo, tier=tier, decision=decision
    )
    assert after.site_limit_w == 50_000.0
    assert after.gpu_floor_w is None
    assert not hook.status().active


def test_dr_target_at_the_meter_is_scaled_to_the_core_side(tmp_path: Path) -> None:
    topo = generate_topology(64, a100_share=1.0)
    section = DemandResponseSection(
        store_path=Path("ev.sqlite"),
        baseline_window_s=60.0,
        events=[ScheduledEvent(id="peak", start=T0 + 60, duration_s=600, reduction_frac=0.25)],
    )
    hook = GridHook(section, site="phx", clock=lambda: T0, base_dir=tmp_path, psu_efficiency=0.95)
    tier = np.repeat(np.arange(4, dtype=np.int8), 16)
    lim = Limits()
    for k in range(200):
        lim = hook.limits(
            Limits(), now_s=T0 + k, site_power_w=40_000.0, topology=topo, tier=tier, decision=None
        )
    # The 30 kW target is wall power at the meter; the core gets what is left after the PSUs.
    assert hook.status().target_w == pytest.approx(30_000.0)
    assert lim.site_limit_w == pytest.approx(30_000.0 * 0.95)


def test_hook_routes_grid_event_messages(tmp_path: Path) -> None:
    hook = GridHook(
        DemandResponseSection(store_path=tmp_path / "ev.sqlite"), site="phx", clock=lambda: T0
    )
    msg = {
        "v": 1,
        "action": "create",
        "event_id": "x",
        "start": T0 + 60,
        "duration_s": 60,
        "reduction_frac": 0.1,
    }
    assert not hook.handle("rheostat/v1/phx/telemetry/r1", b"{}")
    assert hook.handle("rheostat/v1/phx/grid/event", orjson.dumps(msg))
    assert "x" in hook.events.events
    assert list(hook.topic.responses) == ["rheostat/v1/phx/grid/response/x"]
    msg["event_id"] = "y"
    assert hook.handle("rheostat/v1/phx/grid/event/y", orjson.dumps(msg))
    assert "y" in hook.events.events
    msg["event_id"] = "z"
    assert hook.handle("rheostat/v1/phx/grid/event/not-z", orjson.dumps(msg))  # rejected
    assert "z" not in hook.events.events
    assert hook.topic.rejected == 1
    assert not hook.handle("rheostat/v1/phx/grid/event/z/extra", orjson.dumps(msg))
    off = GridHook(
        DemandResponseSection(store_path=tmp_path / "b.sqlite", mqtt_events=False),
        site="phx",
        clock=lambda: T0,
    )
    assert off.topics == []
    assert not off.handle("rheostat/v1/phx/grid/event", orjson.dumps(msg))
