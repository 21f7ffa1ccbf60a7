"""Telemetry ingest: validated rack messages land as slice assignments in the fleet arrays.

Each accepted message writes its rack's contiguous row range (`Topology.rack_slice`) with one
assignment per field; nothing walks GPUs in Python. A rejected message is counted under exactly one
`TelemetryError` reason and dropped; ingest never raises into the event loop.

Sequence rule (replays versus agent restarts): a message is accepted when its `seq` is greater than
the last accepted one for its rack, or when it carries a boot id other than the last accepted one's
(a restarted agent begins its sequence again). A `seq` at or below it is a replay and is rejected
(`stale_sequence`); an agent that sends no boot id is also taken as restarted when its own
timestamp is newer than the last accepted message's by more than `restart_gap_s`.

No message can lock a rack out: a message whose timestamp is further than `max_clock_skew_s` from
the site's time (the racks' median clock, seeded by the controller's wall clock) is rejected
(`clock_skew`) before it can move the sequence, and once a
rack has had no accepted message for `stale_after_s` (it is stale anyway) its next valid message is
accepted whatever its `seq`, and the sequence re-bases on it. Freshness is judged by the receive
time on `clock` (the daemon passes a monotonic clock), so no wall-clock step makes racks stale.

Every table keyed by what messages say is bounded: workload classes by `max_classes` (names past
it map to the unknown class, counted), racks by the topology (unknown racks are rejected).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from controller import wire
from controller.config.telemetry import MAX_CLASSES
from policies.errors import TelemetryError
from policies.fleet import UNKNOWN_CLASS, FleetState
from policies.topology import Topology

log = structlog.get_logger("rheostat.ingest")

#: Distinct class lists whose code arrays are cached; the cache is emptied when full.
MAX_CACHED_CLASS_LISTS = 1024
_REJECT_INDEX = {reason: k for k, reason in enumerate(wire.COMMAND_REJECT_REASONS)}


class ClassTable:
    """Workload-class names ↔ int16 codes in `FleetState.workload_class` (0 = unknown).

    Codes are assigned on first sight and never reused, so a snapshot stays meaningful after the
    policy changes; the tier of each code is looked up per tick with one fancy index. At most
    `max_classes` names get a code: later ones map to the unknown class and are counted
    (`overflow`), so a hostile agent inventing names costs a bounded table.
    """

    def __init__(
        self, names: Sequence[str] = (), *, frozen: bool = False, max_classes: int = 1024
    ) -> None:
        self.max_classes = min(max_classes, MAX_CLASSES)
        self.overflow = 0
        self._codes: dict[str, int] = {}
        self._names: list[str] = ["<unknown>"]
        self._lists: dict[tuple[str, ...], NDArray[np.int16]] = {}
        #: A frozen table knows only `names` (in that order): ingest processes that share the
        #: fleet arrays agree on every code without talking to each other.
        self.frozen = False
        for name in names:
            self.code(name)
        self.frozen = frozen

    def code(self, name: str) -> int:
        found = self._codes.get(name)
        if found is None:
            if self.frozen or len(self._names) > self.max_classes:
                self.overflow += 1
                return UNKNOWN_CLASS
            found = len(self._names)
            self._codes[name] = found
            self._names.append(name)
        return found

    def codes(self, names: tuple[str, ...]) -> NDArray[np.int16]:
        """Codes for a message's class list; an agent sends the same list every time, so the
        array is built once per distinct list (read-only, since it is shared)."""
        found = self._lists.get(names)
        if found is None:
            found = np.array([self.code(n) for n in names], dtype=np.int16)
            found.flags.writeable = False
            if len(self._lists) >= MAX_CACHED_CLASS_LISTS:  # bounded: hostile lists cannot pile up
                self._lists.clear()
            self._lists[names] = found
        return found

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def tier_table(self, classes: dict[str, int], default: int) -> NDArray[np.int8]:
        """Tier of every known code under a class → tier mapping."""
        return np.array([classes.get(n, default) for n in self._names], dtype=np.int8)


class ConflatingQueue(asyncio.Queue[Any]):
    """An aiomqtt message queue that keeps only the newest message per topic.

    A burst of telemetry then costs at most one pending message per rack: the queue cannot grow
    without bound, and the messages it replaces are counted (`conflated`) rather than lost
    silently. Its length is the ingest backlog. Only `asyncio.Queue`'s public methods are
    overridden (the ones aiomqtt and the daemon call); the base class's own storage stays
    empty. A replaced message keeps its place in line, so a chatty rack cannot starve others.
    """

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize=0)
        del maxsize  # bounded by the number of topics instead
        self._latest: dict[str, Any] = {}
        self._arrived = asyncio.Event()
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._unfinished = 0
        self.conflated = 0

    def put_nowait(self, item: Any) -> None:
        key = str(item.topic)
        if key in self._latest:
            self.conflated += 1  # replacing a pending message adds no unfinished work
        else:
            self._unfinished += 1
            self._all_done.clear()
        self._latest[key] = item
        self._arrived.set()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0:
            self._all_done.set()

    async def join(self) -> None:
        await self._all_done.wait()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._latest:
            raise asyncio.QueueEmpty
        item = self._latest.pop(next(iter(self._latest)))
        if not self._latest:
            self._arrived.clear()
        return item

    async def get(self) -> Any:
        while not self._latest:
            await self._arrived.wait()
        return self.get_nowait()

    def qsize(self) -> int:
        return len(self._latest)

    def empty(self) -> bool:
        return not self._latest

    def full(self) -> bool:
        return False


@dataclass(eq=False, kw_only=True)
class IngestCounters:
    messages: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(TelemetryError.REASONS, 0)
    )
    #: Sequences re-based because a rack had been silent (or locked out) for a stale period.
    rebased: int = 0


@dataclass(eq=False, kw_only=True)
class AgentReports:
    """What agents say about the commands they got, per rack (from telemetry's optional fields).

    `rejected_total` turns the agents' cumulative per-boot counts into one counter per reason
    (`wire.COMMAND_REJECT_REASONS` order) that never goes down: an increase is added as it is
    seen, and a new boot's counts are added whole.
    """

    cmd_epoch: NDArray[np.int64]
    cmd_seq: NDArray[np.int64]
    fallback: NDArray[np.bool_]
    rejected_last: NDArray[np.int64]
    rejected_total: NDArray[np.float64]
    #: Racks whose last message reported any refusal (the rest hold zeros in `rejected_last`).
    reported: NDArray[np.bool_]

    @classmethod
    def empty(cls, n_racks: int) -> AgentReports:
        n_reasons = len(wire.COMMAND_REJECT_REASONS)
        return cls(
            cmd_epoch=np.full(n_racks, -1, dtype=np.int64),
            cmd_seq=np.full(n_racks, -1, dtype=np.int64),
            fallback=np.zeros(n_racks, dtype=np.bool_),
            rejected_last=np.zeros((n_racks, n_reasons), dtype=np.int64),
            rejected_total=np.zeros(n_reasons),
            reported=np.zeros(n_racks, dtype=np.bool_),
        )

    def take(self, rack: int, msg: wire.Telemetry, *, new_boot: bool) -> None:
        self.cmd_epoch[rack] = -1 if msg.cmd_epoch is None else msg.cmd_epoch
        self.cmd_seq[rack] = -1 if msg.cmd_seq is None else msg.cmd_seq
        self.fallback[rack] = msg.fallback
        if not msg.cmd_rejected:  # the common case: nothing refused since the agent booted
            if self.reported[rack]:
                self.rejected_last[rack] = 0
                self.reported[rack] = False
            return
        self.reported[rack] = True
        counts = np.zeros(len(wire.COMMAND_REJECT_REASONS), dtype=np.int64)
        for reason, count in msg.cmd_rejected.items():
            counts[_REJECT_INDEX[reason]] = count
        last = self.rejected_last[rack]
        reset = new_boot or bool((counts < last).any())  # counts restart with the agent
        self.rejected_total += counts if reset else counts - last
        self.rejected_last[rack] = counts


class Ingest:
    """Writes accepted telemetry into `fleet`; the tick loop snapshots `fleet` with `copy()`.

    `clock` gives the receive time (s) that freshness is judged by, so an agent's skewed clock
    cannot make a silent rack look fresh; the daemon passes a monotonic clock. `wall_clock`
    (Unix s; `clock` when not given) is what message timestamps are compared with.
    """

    def __init__(
        self,
        topology: Topology,
        fleet: FleetState,
        classes: ClassTable,
        *,
        restart_gap_s: float,
        clock: Callable[[], float] = time.time,
        wall_clock: Callable[[], float] | None = None,
        max_clock_skew_s: float = math.inf,
        stale_after_s: float = math.inf,
        max_bytes: int = wire.MAX_PAYLOAD_BYTES,
        msg_ts_s: NDArray[np.float64] | None = None,
        guard: Callable[[int], AbstractContextManager[Any]] | None = None,
        cmd_rejected: NDArray[np.int64] | None = None,
    ) -> None:
        self.topology = topology
        self.fleet = fleet
        self.classes = classes
        self.restart_gap_s = restart_gap_s
        self.clock = clock
        self.wall_clock = wall_clock or clock
        self.max_clock_skew_s = max_clock_skew_s
        self.stale_after_s = stale_after_s
        self.max_bytes = max_bytes
        self.counters = IngestCounters()
        self.agents = AgentReports.empty(topology.n_racks)
        #: Per rack, its GPU count and its rows, as plain Python values (read once per message).
        self._rack_gpus = [int(size) for size in topology.rack_sizes()]
        self._rack_rows = [topology.rack_slice(rack) for rack in range(topology.n_racks)]
        #: Per rack, the last accepted message's own timestamp (the restart rule); shared
        #: between ingest processes when they share the fleet arrays.
        self._msg_ts_s = np.full(topology.n_racks, -np.inf) if msg_ts_s is None else msg_ts_s
        #: Per rack and reason (`wire.COMMAND_REJECT_REASONS`), the commands its agent says it
        #: refused since it booted (fencing: `stale_epoch`), as its last message reported.
        self.cmd_rejected = (
            np.zeros((topology.n_racks, len(wire.COMMAND_REJECT_REASONS)), np.int64)
            if cmd_rejected is None
            else cmd_rejected
        )
        #: Held around one rack's check-and-write: another process may ingest the same rack.
        self._guard = guard or (lambda _rack: contextlib.nullcontext())
        self._boot: list[str | None] = [None] * topology.n_racks
        #: Per rack, its clock minus our receive clock (s) at its last accepted message, and at
        #: its last message refused for skew; the site's time is their median.
        self._offset_s = np.full(topology.n_racks, np.nan)
        self._pending_offset_s = np.full(topology.n_racks, np.nan)
        self._site_offset: tuple[float, float] | None = None  # (computed at, offset)
        self._started_s = clock()

    def _site_offset_s(self, now_s: float) -> float:
        """The site's time minus the receive clock: what a message's `ts` is judged by. Units: s.

        The median over racks of their clocks (as of their last accepted message), so neither an
        agent whose clock runs ahead nor a step of the controller's own wall clock moves it; the
        controller's wall clock only seeds it until racks report. Should nothing be accepted for a
        stale period while over half the racks agree among themselves (the controller's clock is
        the wrong one), their median is taken. Recomputed at most once a second.
        """
        cached = self._site_offset
        if cached is not None and now_s - cached[0] < 1.0:
            return cached[1]
        known = self._offset_s[np.isfinite(self._offset_s)]
        if known.size:
            offset = float(np.median(known))
        else:
            pending = self._pending_offset_s[np.isfinite(self._pending_offset_s)]
            quiet = now_s - self._started_s > self.stale_after_s
            if quiet and pending.size * 2 > self._offset_s.size:
                offset = float(np.median(pending))
            else:
                offset = self.wall_clock() - now_s
        self._site_offset = (now_s, offset)
        return offset

    def handle(self, topic: str, payload: bytes) -> bool:
        """Validate and apply one message; returns whether it was accepted. Never raises.

        Anything unexpected while handling one message (a bug, not a bad message) is logged and
        counted as `internal_error`; the next message is handled as usual.
        """
        self.counters.messages += 1
        try:
            self._apply(topic, payload)
        except TelemetryError as exc:
            self.counters.rejected[exc.reason] += 1
            return False
        except Exception:  # one message must never stop ingest
            self.counters.rejected["internal_error"] += 1
            log.exception("telemetry message could not be handled", topic=topic[:200])
            return False
        self.counters.accepted += 1
        return True

    def _apply(self, topic: str, payload: bytes) -> None:
        rack_id = wire.rack_from_topic(topic)
        rack = self.topology.rack_index.get(rack_id)
        if len(payload) > self.max_bytes:  # before the lookup: a huge payload is never parsed
            raise TelemetryError("too_large", f"{len(payload)} bytes", rack=rack_id)
        if rack is None:
            raise TelemetryError("unknown_rack", "not in the topology", rack=rack_id)
        msg = wire.decode_telemetry(
            payload, rack=rack_id, expected_gpus=self._rack_gpus[rack], max_bytes=self.max_bytes
        )
        with self._guard(rack):
            self._write(rack, rack_id, msg)

    def _write(self, rack: int, rack_id: str, msg: wire.Telemetry) -> None:
        now_s = self.clock()
        offset_s = msg.ts_s - now_s
        skew_s = offset_s - self._site_offset_s(now_s)
        if not abs(skew_s) <= self.max_clock_skew_s:
            self._pending_offset_s[rack] = offset_s
            raise TelemetryError(
                "clock_skew", f"ts {msg.ts_s:.3f} is {skew_s:+.1f} s off site time", rack=rack_id
            )
        fleet = self.fleet
        last_seq = int(fleet.rack_seq[rack])
        held_boot = self._boot[rack]
        new_boot = msg.boot is not None and msg.boot != held_boot
        if not (new_boot or msg.seq > last_seq):
            restarted = msg.boot is None and msg.ts_s > self._msg_ts_s[rack] + self.restart_gap_s
            silent = now_s - fleet.rack_last_seen_s[rack] > self.stale_after_s
            if not (restarted or silent):
                raise TelemetryError(
                    "stale_sequence", f"seq {msg.seq} after {last_seq}", rack=rack_id
                )
            if silent and not restarted:
                self.counters.rebased += 1
        rows = self._rack_rows[rack]
        fleet.power_w[rows] = msg.power_w
        fleet.sm_clock_mhz[rows] = msg.sm_clock_mhz
        fleet.util[rows] = msg.util
        fleet.mem_util[rows] = msg.mem_util
        fleet.temp_c[rows] = msg.temp_c
        fleet.cap_w[rows] = msg.cap_w
        fleet.workload_class[rows] = self.classes.codes(msg.classes)[msg.class_idx]
        fleet.rack_power_w[rack] = msg.rack_power_w
        fleet.rack_last_seen_s[rack] = now_s
        fleet.rack_seq[rack] = msg.seq
        rejected = msg.cmd_rejected
        if rejected:
            self.cmd_rejected[rack] = [rejected.get(r, 0) for r in wire.COMMAND_REJECT_REASONS]
        else:  # the common case: nothing refused (zeros written whole; the row may be shared)
            self.cmd_rejected[rack] = 0
        self._msg_ts_s[rack] = msg.ts_s
        self._offset_s[rack] = offset_s
        self.agents.take(rack, msg, new_boot=new_boot)
        self._boot[rack] = msg.boot
