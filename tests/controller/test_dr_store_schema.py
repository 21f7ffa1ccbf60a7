"""The event store's versioned layout: an old file opens, migrates once, and reads back the same.

`data/dr_events_v0.sqlite` was written by the store as it was before versioning (user_version
0, no `done_s` column): three events, one with a carried cut, one cancelled, one opted out.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sqlite3
from pathlib import Path

import pytest

from controller.grid.store import BODY_FIELDS, SCHEMA_VERSION, EventStore, resolve_store_path
from policies.dr.events import DrEvent
from policies.errors import ConfigError

V0_FILE = Path(__file__).parent / "data" / "dr_events_v0.sqlite"
T0 = 1_767_225_600.0  # when the fixture's first event starts, 2026-01-01T00:00:00Z


def _pragma_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


@pytest.fixture
def v0(tmp_path: Path) -> Path:
    path = tmp_path / "events.sqlite"
    shutil.copyfile(V0_FILE, path)
    assert _pragma_version(path) == 0
    return path


def test_a_pre_versioning_file_migrates_and_reads_back(v0: Path) -> None:
    store = EventStore(v0)
    assert store.version == SCHEMA_VERSION == _pragma_version(v0)
    events = {e.event_id: (e, note) for e, note in store.all()}
    assert set(events) == {"peak-1", "cancelled", "sched-out"}
    peak, note = events["peak-1"]
    assert note == "opted in"
    assert (peak.source, peak.modification, peak.baseline_w) == ("openadr", 2, 850_000.0)
    assert peak.carry_from_s == -math.inf  # stored as null
    cancelled, _ = events["cancelled"]
    assert (cancelled.cancelled_s, cancelled.carry_cut_w) == (T0 + 7300, 50_000.0)
    assert events["sched-out"][0].opted_in is False
    with sqlite3.connect(v0) as conn:
        done = dict(conn.execute("SELECT event_id, done_s FROM dr_event").fetchall())
    assert done == {e.event_id: e.end_s + e.recovery_s for e, _ in events.values()}
    # Reopening finds nothing to do; a new version written now round-trips.
    again = EventStore(v0)
    again.put(dataclasses.replace(peak, modification=3))
    assert again.get("peak-1") == dataclasses.replace(peak, modification=3)
    assert again.note("peak-1") == "opted in"


def test_pruning_after_migration_uses_the_backfilled_column(v0: Path) -> None:
    store = EventStore(v0)
    # Both earlier events are over with their recovery by T0 + 10000; the opted-out one starts
    # a day later and its window has not passed.
    assert store.prune(T0 + 10_000.0) == 2
    assert [e.event_id for e in store.events()] == ["sched-out"]


def test_read_only_opening_neither_migrates_nor_creates(v0: Path, tmp_path: Path) -> None:
    rows = EventStore(v0, read_only=True).all()
    assert len(rows) == 3
    assert _pragma_version(v0) == 0
    with pytest.raises(ConfigError, match="cannot open"):
        EventStore(tmp_path / "absent.sqlite", read_only=True)
    assert not (tmp_path / "absent.sqlite").exists()


def test_a_file_from_a_newer_release_is_refused(v0: Path) -> None:
    with sqlite3.connect(v0) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for read_only in (False, True):
        with pytest.raises(ConfigError, match="newer than this release"):
            EventStore(v0, read_only=read_only)
    assert _pragma_version(v0) == SCHEMA_VERSION + 1


def test_a_failed_migration_step_leaves_the_file_at_its_version(v0: Path) -> None:
    # A version-1 file that somehow has the column version 2 adds: the ALTER fails, and the
    # step's transaction (backfill and version stamp included) rolls back.
    with sqlite3.connect(v0) as conn:
        conn.execute("ALTER TABLE dr_event ADD COLUMN done_s REAL")
        conn.execute("PRAGMA user_version = 1")
    with pytest.raises(ConfigError, match="duplicate column"):
        EventStore(v0)
    assert _pragma_version(v0) == 1
    with sqlite3.connect(v0) as conn:
        assert conn.execute("SELECT count(*) FROM dr_event WHERE done_s IS NULL").fetchone() == (3,)


def test_a_new_file_starts_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.sqlite"
    EventStore(path)
    assert _pragma_version(path) == SCHEMA_VERSION


def test_dr_event_fields_match_the_current_body_layout() -> None:
    # Changing DrEvent's fields needs a migration rewriting the stored bodies and a new
    # BODY_FIELDS entry; this fails until both exist.
    assert {f.name for f in dataclasses.fields(DrEvent)} == BODY_FIELDS[SCHEMA_VERSION]


def test_relative_store_paths_go_under_the_state_directory(tmp_path: Path) -> None:
    rel, policy_dir = Path("events.sqlite"), tmp_path / "etc"
    state = {"STATE_DIRECTORY": "/var/lib/rheostat:/var/lib/other"}
    assert resolve_store_path(rel, policy_dir, state) == Path("/var/lib/rheostat/events.sqlite")
    assert resolve_store_path(rel, policy_dir, {}) == policy_dir / "events.sqlite"
    assert resolve_store_path(tmp_path / "abs.sqlite", policy_dir, state) == tmp_path / "abs.sqlite"
