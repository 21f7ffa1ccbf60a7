"""Demand-response events in an embedded SQLite file, so a restart mid-event keeps honouring it.

One row per event id holds its latest version (the full `DrEvent` as JSON, including the locked
baseline and any carried cut) and its note (opt decision, shortfall reason) for `rheostat events`
and the VEN's responses. Writes are single transactions, so a crash leaves either the old or the
new version. SQLite's own locking lets `rheostat events` read the file while the daemon writes it.

The layout is versioned with `PRAGMA user_version`: `MIGRATIONS[k]` takes a file from version k
to k + 1, each in one transaction with its version stamp, so a file from any earlier release
opens (files from before versioning read as version 0). A file from a newer release is refused
rather than misread. A change to `DrEvent`'s fields needs a migration that rewrites the bodies
and a new `BODY_FIELDS` entry (a test holds the two together).

Where the file lives: a relative `store_path` resolves against the state directory systemd gives
the service (`StateDirectory=rheostat` sets `$STATE_DIRECTORY` to /var/lib/rheostat; the
Kubernetes Deployment sets it to its volume's mount), else against the policy file's directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from policies.dr.events import DrEvent
from policies.errors import ConfigError, PolicyError


def _v1_tables(conn: sqlite3.Connection) -> None:
    """The original layout. A file from before versioning already has it (a no-op there)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS dr_event ("
        " event_id TEXT PRIMARY KEY, source TEXT NOT NULL, modification INTEGER NOT NULL,"
        " start_s REAL NOT NULL, body TEXT NOT NULL, note TEXT NOT NULL DEFAULT '')"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS dr_event_start ON dr_event(start_s)")


def _v2_done_column(conn: sqlite3.Connection) -> None:
    """`done_s` (hold end plus recovery, s): pruning selects its candidates by index, not by
    decoding every row. Filled from the stored bodies, which have carried these fields since v1.
    """
    conn.execute("ALTER TABLE dr_event ADD COLUMN done_s REAL")
    conn.execute(
        "UPDATE dr_event SET done_s = json_extract(body, '$.start_s')"
        " + json_extract(body, '$.duration_s') + json_extract(body, '$.recovery_s')"
    )
    conn.execute("CREATE INDEX dr_event_done ON dr_event(done_s)")


#: `MIGRATIONS[k]` takes a file from version k to k + 1.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1_tables, _v2_done_column)
SCHEMA_VERSION = len(MIGRATIONS)
#: The `DrEvent` fields a body holds at each version (from version 1 on).
BODY_FIELDS: Mapping[int, frozenset[str]] = {
    version: frozenset(
        [
            "event_id",
            "source",
            "notified_s",
            "start_s",
            "duration_s",
            "ramp_s",
            "recovery_s",
            "reduction_frac",
            "limit_w",
            "modification",
            "cancelled_s",
            "opted_in",
            "baseline_w",
            "carry_cut_w",
            "carry_from_s",
        ]
    )
    for version in (1, 2)
}


def resolve_store_path(
    store_path: Path, base_dir: Path | None, env: Mapping[str, str] | None = None
) -> Path:
    """Where a configured store path points: absolute as given; relative under the state
    directory (`$STATE_DIRECTORY`, its first entry when systemd lists several) if set, else under
    `base_dir` (the policy file's directory), else the working directory."""
    if store_path.is_absolute():
        return store_path
    state = (os.environ if env is None else env).get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / store_path
    return store_path if base_dir is None else base_dir / store_path


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

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        """Open (creating or migrating) the file; `read_only` (for `rheostat events`, beside a
        running daemon) neither creates nor migrates: it reads any version up to this one's."""
        self.path = Path(path)
        self.read_only = read_only
        try:
            if read_only:
                self.version = self._check_version()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.version = self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the event store: {exc}", file=str(self.path)) from exc

    def _too_new(self, version: int) -> ConfigError:
        msg = (
            f"the event store has schema version {version}, newer than this release's "
            f"{SCHEMA_VERSION}: upgrade Rheostat or point demand_response.store_path elsewhere"
        )
        return ConfigError(msg, file=str(self.path))

    def _check_version(self) -> int:
        with self._connect() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise self._too_new(version)
        return version

    def _migrate(self) -> int:
        """Brings the file to `SCHEMA_VERSION`, one transaction per step; returns the version."""
        with closing(sqlite3.connect(self.path, timeout=5.0, isolation_level=None)) as conn:
            while True:
                conn.execute("BEGIN IMMEDIATE")  # a second process migrating waits, then sees it
                try:
                    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                    if version > SCHEMA_VERSION:
                        raise self._too_new(version)
                    if version == SCHEMA_VERSION:
                        conn.execute("COMMIT")
                        return version
                    MIGRATIONS[version](conn)
                    conn.execute(f"PRAGMA user_version = {version + 1:d}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            connect = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        else:
            connect = sqlite3.connect(self.path, timeout=5.0)
        with closing(connect) as conn, conn:
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
                "INSERT INTO dr_event(event_id, source, modification, start_s, body, note, done_s) "
                "VALUES (?, ?, ?, ?, ?, COALESCE(?, ''), ?) "
                "ON CONFLICT(event_id) DO UPDATE SET source=excluded.source, "
                "modification=excluded.modification, start_s=excluded.start_s, "
                "body=excluded.body, note=COALESCE(?, dr_event.note), done_s=excluded.done_s",
                (
                    event.event_id,
                    event.source,
                    event.modification,
                    event.start_s,
                    _encode(event),
                    note,
                    event.end_s + event.recovery_s,
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
        with self._connect() as conn:
            rows = conn.execute("SELECT body FROM dr_event WHERE done_s < ?", (before_s,))
            candidates = [_decode(body, self.path) for (body,) in rows.fetchall()]
            gone = [e.event_id for e in candidates if e.is_over(before_s)]
            conn.executemany("DELETE FROM dr_event WHERE event_id = ?", [(i,) for i in gone])
        return len(gone)
