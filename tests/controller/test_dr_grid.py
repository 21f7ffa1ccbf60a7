"""Grid package: event store, manager (opt policy, Flex, schedule), messages, `rheostat events`."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import orjson
import pytest

from controller.cli import main
from controller.config import DemandResponseSection, ScheduledEvent
from controller.grid.manager import FlexInputs, GridEvents
from controller.grid.sources import parse_event_message
from controller.grid.store import EventStore
from controller.wire import Cancel
from policies.dr.events import DrEvent, EventStatus
from policies.errors import ConfigError, ProtocolError

T0 = 1_764_300_000.0


def mk(**kw: object) -> DrEvent:
    fields: dict[str, object] = {
        "event_id": "e",
        "source": "test",
        "notified_s": T0,
        "start_s": T0 + 600,
        "duration_s": 3600.0,
        "ramp_s": 30.0,
        "recovery_s": 300.0,
        "reduction_frac": 0.25,
    }
    fields.update(kw)
    return DrEvent(**fields)  # type: ignore[arg-type]


def manager(tmp_path: Path, **kw: object) -> GridEvents:
    dr = DemandResponseSection(store_path=tmp_path / "ev.sqlite", **kw)  # type: ignore[arg-type]
    grid = GridEvents(section=dr, store=EventStore(dr.store_path))
    for k in range(600):
        grid.record_power(T0 - 600 + k, 100_000.0 + (k % 2) * 1000)
    return grid


def test_store_round_trip_and_replace(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "sub" / "ev.sqlite")
    e = mk(baseline_w=1e5)
    store.put(e, "hello")
    assert store.get("e") == e
    assert store.note("e") == "hello"
    store.put(e.cancel(T0 + 700))
    assert store.note("e") == "hello"  # a None note keeps the old one
    reopened = EventStore(tmp_path / "sub" / "ev.sqlite")
    got = reopened.get("e")
    assert got is not None
    assert got.cancelled_s == T0 + 700
    assert math.isinf(got.carry_from_s)
    assert reopened.prune(T0 + 10_000) == 1
    assert reopened.get("e") is None


def test_store_reports_corruption_and_bad_paths(tmp_path: Path) -> None:
    path = tmp_path / "ev.sqlite"
    store = EventStore(path)
    store.put(mk())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE dr_event SET body = '{\"event_id\": 3}'")
    with pytest.raises(ConfigError, match="unreadable event row"):
        store.events()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError):
        EventStore(tmp_path / "file" / "ev.sqlite")


def test_manager_locks_baseline_and_ramps(tmp_path: Path) -> None:
    grid = manager(tmp_path)
    assert grid.apply(mk(), T0) == ("optIn", "")
    assert not grid.tick(T0).budget.active
    tick = grid.tick(T0 + 600)
    assert grid.events["e"].baseline_w == pytest.approx(100_500)
    assert tick.limit_w == pytest.approx(75_375)
    # the lock is persisted: a fresh manager on the same file agrees
    again = GridEvents(section=grid.section, store=EventStore(grid.store.path))
    assert again.tick(T0 + 700).limit_w == pytest.approx(75_375)


def test_manager_opts_out_of_too_deep_events_unless_grid_first(tmp_path: Path) -> None:
    grid = manager(tmp_path, max_reduction_frac=0.3)
    opt, reason = grid.apply(mk(reduction_frac=0.5), T0)
    assert opt == "optOut"
    assert "max_reduction_frac" in reason
    assert grid.events["e"].status(T0 + 700) is EventStatus.OPTED_OUT
    assert not grid.tick(T0 + 700).budget.active
    first = manager(tmp_path / "gf", max_reduction_frac=0.3, grid_first=True)
    assert first.apply(mk(reduction_frac=0.5), T0)[0] == "optIn"


def test_manager_ignores_stale_modifications_and_carries_cut(tmp_path: Path) -> None:
    grid = manager(tmp_path)
    grid.apply(mk(), T0)
    grid.tick(T0 + 600)
    grid.apply(mk(reduction_frac=0.05), T0 + 1000)  # same modification number: ignored
    assert grid.events["e"].reduction_frac == 0.25
    grid.apply(mk(reduction_frac=0.05, modification=1, notified_s=T0 + 1000), T0 + 1000)
    assert grid.tick(T0 + 1000).limit_w == pytest.approx(75_375, rel=1e-3)
    assert grid.tick(T0 + 1150).limit_w == pytest.approx(75_375 + 0.5 * 25_125, rel=1e-3)
    assert grid.cancel("e", T0 + 1200)
    assert not grid.cancel("nope", T0)


def test_flex_raises_the_limit_and_reports_why(tmp_path: Path) -> None:
    grid = manager(tmp_path)
    grid.apply(mk(reduction_frac=0.5), T0)
    n = 100
    flex = FlexInputs(
        demand_w=np.full(n, 400.0),
        tier=np.repeat(np.arange(4, dtype=np.int8), n // 4),
        min_cap_w=np.full(n, 100.0),
        overhead_w=60_500.0,
    )
    tick = grid.tick(T0 + 700, flex)
    # floors: 25 x (400 + 360 + 300 + 200) = 31.5 kW, + 60.5 kW overhead = 92 kW > 50.25 kW
    assert tick.flex is not None
    assert tick.limit_w == pytest.approx(92_000)
    assert tick.shortfall_w == pytest.approx(92_000 - 50_250)
    assert tick.gpu_floor_w is not None
    assert tick.gpu_floor_w[:25].tolist() == [400.0] * 25
    assert "Flex" in grid.notes["e"]
    assert "Flex" in EventStore(grid.store.path).note("e")  # `rheostat events` shows why


def test_compliance_counts_the_hold(tmp_path: Path) -> None:
    grid = manager(tmp_path)
    grid.apply(mk(), T0)
    for k in range(100):
        t = T0 + 600 + k
        grid.record_power(t, 75_000.0 if k >= 10 else 90_000.0)
        grid.tick(t)
    assert grid.compliance["e"].ratio == pytest.approx(0.90)


def test_schedule_loads_once_and_revises_on_change(tmp_path: Path) -> None:
    spec = ScheduledEvent(id="tariff", start=T0 + 3600, duration_s=7200, limit_kw=80.0)
    grid = manager(tmp_path, events=[spec])
    grid.load_schedule(T0)
    grid.load_schedule(T0 + 1)
    assert grid.events["tariff"].modification == 0
    assert grid.events["tariff"].ramp_start_s == T0 + 3600 - 30
    changed = DemandResponseSection(
        store_path=grid.section.store_path,
        events=[ScheduledEvent(id="tariff", start=T0 + 3600, duration_s=7200, limit_kw=70.0)],
    )
    grid.section = changed
    grid.load_schedule(T0 + 2)
    assert grid.events["tariff"].modification == 1
    assert grid.events["tariff"].limit_w == 70_000.0


def test_event_messages(tmp_path: Path) -> None:
    dr = DemandResponseSection(store_path=tmp_path / "x")
    ok = parse_event_message(
        b'{"v":1,"action":"create","event_id":"a","start":"2026-07-14T15:00:00-07:00",'
        b'"duration_s":600,"limit_kw":500,"recovery_s":60}',
        now_s=T0,
        section=dr,
    )
    assert isinstance(ok, DrEvent)
    assert ok.limit_w == 500_000.0
    assert ok.recovery_s == 60.0
    assert parse_event_message(
        b'{"v":1,"action":"cancel","event_id":"a"}', now_s=T0, section=dr
    ) == Cancel("a")
    for bad in (
        b"[]",
        b'{"v":2,"action":"cancel","event_id":"a"}',
        b'{"v":1,"action":"create","event_id":"a","start":1,"duration_s":5}',
        (
            b'{"v":1,"action":"create","event_id":"a","start":"2026-07-14T15:00:00",'
            b'"duration_s":5,"reduction_frac":0.1}'
        ),
        b" " * 20_000,
    ):
        with pytest.raises(ProtocolError):
            parse_event_message(bad, now_s=T0, section=dr)


def test_events_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = EventStore(tmp_path / "ev.sqlite")
    store.put(mk(baseline_w=100_000.0), "")
    store.put(mk(event_id="old", start_s=T0 - 90_000, opted_in=False), "too deep")
    assert main(["events", "--store", str(tmp_path / "ev.sqlite"), "--json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert [r["event_id"] for r in rows] == ["old", "e"]
    assert rows[0]["status"] == "opted_out"
    assert rows[1]["target_kw"] == pytest.approx(75.0)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        json.dumps({"site": {"name": "x"}, "demand_response": {"store_path": "ev.sqlite"}})
    )
    assert main(["events", "--config", str(policy)]) == 0
    table = capsys.readouterr().out
    assert "too deep" in table
    assert "-25%" in table
    assert main(["events", "--store", str(tmp_path / "missing.sqlite")]) == 2
    policy.write_text(json.dumps({"demand_response": {"grid_first": "maybe"}}))
    assert main(["events", "--config", str(policy)]) == 2
    assert "demand_response.grid_first" in capsys.readouterr().err


def test_finished_events_are_skipped_until_they_change(tmp_path: Path) -> None:
    grid = manager(tmp_path)
    grid.apply(mk(duration_s=60.0), T0)
    assert grid.tick(T0 + 620).budget.active
    assert not grid.tick(T0 + 2000).budget.active
    assert "e" in grid._done
    later = mk(start_s=T0 + 3000, notified_s=T0 + 2500, modification=1)
    grid.apply(later, T0 + 2500)
    assert "e" not in grid._done
    assert grid.tick(T0 + 3100).limit_w == pytest.approx(75_375)
