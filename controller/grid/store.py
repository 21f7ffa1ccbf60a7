"""Demand-response events in an embedded SQLite file, so a restart mid-event keeps honouring it.

One row per event id holds its latest version (the full `DrEvent` as JSON, including the locked
baseline and any carried cut); a second table keeps each event's opt decision and shortfall
reason for `rheostat events` and the VEN's responses. Writes are single transactions, so a crash
leaves either the old or the new version. SQLite's own locking lets `rheostat events` read the file
while the daemon writes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from policies.dr import DrEvent
from policies.errors import ConfigError, PolicyError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dr_event (
    event_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    modification INTEGER NOT NULL,
    start_s REAL NOT NULL,
    body TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dr_event_start ON dr_event(start_s);
"""


#: SQLite's INTEGER is a signed 64-bit value.
_MAX_SQLITE_INT = 2**63 - 1


def _encode(event: DrEvent) -> str:
    body = dataclasses.asdict(event)
    # JSON has no infinities; -inf marks "no carried cut".
    if not math.isfinite(body["carry_from_s"]):
        body["carry_from_s"] = None
    return json.dumps(body, sort_keys=True)


def _decode(body: str, path: Path) -> DrEvent:
    try:
        fields: dict[str, Any] = json.loads(body)
        if fields.get("carry_from_s") is None:
            fields["carry_from_s"] = -math.inf
        return DrEvent(**fields)
    except (ValueError, TypeError, PolicyError) as exc:
        raise ConfigError(f"unreadable event row: {exc}", file=str(path)) from exc


class EventStore:
    """Events on disk. Open with `EventStore(path)`; each call opens a short-lived connection.

    Short connections keep the store safe to use from the daemon's thread pool and from a second
    process, at a cost (well under a millisecond per call) that events, arriving minutes apart,
    never notice.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the event store: {exc}", file=str(self.path)) from exc

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=5.0)) as conn, conn:
            yield conn

    def put(self, event: DrEvent, note: str | None = None) -> None:
        """Insert or replace an event's version (and its note, when given).

        A modification number SQLite cannot hold is refused here too (`PolicyError`), though the
        sources already bound it to a safe integer.
        """
        if not 0 <= event.modification <= _MAX_SQLITE_INT:
            raise PolicyError(f"event {event.event_id}: modification out of range")
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO dr_event(event_id, source, modification, start_s, body, note) "
                "VALUES (?, ?, ?, ?, ?, COALESCE(?, '')) "
                "ON CONFLICT(event_id) DO UPDATE SET source=excluded.source, "
                "modification=excluded.modification, start_s=excluded.start_s, "
                "body=excluded.body, note=COALESCE(?, dr_event.note)",
                (
                    event.event_id,
                    event.source,
                    event.modification,
                    event.start_s,
                    _encode(event),
                    note,
                    note,
                ),
            )

    def put_many(self, events: list[DrEvent]) -> None:
        for event in events:
            self.put(event)

    def get(self, event_id: str) -> DrEvent | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT body FROM dr_event WHERE event_id = ?", (event_id,)
            ).fetchone()
        return None if row is None else _decode(row[0], self.path)

    def note(self, event_id: str) -> str:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT note FROM dr_event WHERE event_id = ?", (event_id,)
            ).fetchone()
        return "" if row is None else str(row[0])

    def all(self) -> list[tuple[DrEvent, str]]:
        """Every event with its note, oldest start first."""
        with self._connect() as conn:
            rows = conn.execute("SELECT body, note FROM dr_event ORDER BY start_s, event_id")
            return [(_decode(body, self.path), str(note)) for body, note in rows.fetchall()]

    def events(self) -> list[DrEvent]:
        return [event for event, _ in self.all()]

    def prune(self, before_s: float) -> int:
        """Forget events that ended (with their recovery) before `before_s`; returns how many."""
        gone = [
            e.event_id
            for e in self.events()
            if e.is_over(before_s) and e.end_s + e.recovery_s < before_s
        ]
        with self._connect() as conn:
            conn.executemany("DELETE FROM dr_event WHERE event_id = ?", [(i,) for i in gone])
        return len(gone)
