"""Telemetry ingest: validated rack messages land as slice assignments in the fleet arrays.

Each accepted message writes its rack's contiguous row range (`Topology.rack_slice`) with one
assignment per field; nothing walks GPUs in Python. A rejected message is counted under exactly one
`TelemetryError` reason and dropped; ingest never raises into the event loop.

Sequence rule (replays versus agent restarts): a message is accepted when its `seq` is greater than
the last accepted one for its rack. A `seq` at or below it is a replay and is rejected
(`stale_sequence`) unless its own timestamp is newer than the last accepted message's by more than
`restart_gap_s`: an agent that restarts begins again at a low `seq` but stamps the current time,
while a replayed message carries the old time it was first sent with.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller import wire
from policies.errors import TelemetryError
from policies.fleet import UNKNOWN_CLASS, FleetState
from policies.topology import Topology

MAX_CLASSES = np.iinfo(np.int16).max


class ClassTable:
    """Workload-class names ↔ int16 codes in `FleetState.workload_class` (0 = unknown).

    Codes are assigned on first sight and never reused, so a snapshot stays meaningful after the
    policy changes; the tier of each code is looked up per tick with one fancy index.
    """

    def __init__(self, names: Sequence[str] = (), *, frozen: bool = False) -> None:
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
            if self.frozen or len(self._names) > MAX_CLASSES:
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
            if len(self._lists) < MAX_CLASSES:  # bounded: a hostile agent cannot grow it forever
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


class Ingest:
    """Writes accepted telemetry into `fleet`; the tick loop snapshots `fleet` with `copy()`.

    `clock` gives the receive time (s) that freshness is judged by, so an agent's skewed clock
    cannot make a silent rack look fresh.
    """

    def __init__(
        self,
        topology: Topology,
        fleet: FleetState,
        classes: ClassTable,
        *,
        restart_gap_s: float,
        clock: Callable[[], float] = time.time,
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
        self.max_bytes = max_bytes
        self.counters = IngestCounters()
        self._sizes = topology.rack_sizes()
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

    def handle(self, topic: str, payload: bytes) -> bool:
        """Validate and apply one message; returns whether it was accepted. Never raises."""
        self.counters.messages += 1
        try:
            self._apply(topic, payload)
        except TelemetryError as exc:
            self.counters.rejected[exc.reason] += 1
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
            payload, rack=rack_id, expected_gpus=int(self._sizes[rack]), max_bytes=self.max_bytes
        )
        with self._guard(rack):
            self._write(rack, rack_id, msg)

    def _write(self, rack: int, rack_id: str, msg: wire.Telemetry) -> None:
        last_seq = int(self.fleet.rack_seq[rack])
        if msg.seq <= last_seq and not msg.ts_s > self._msg_ts_s[rack] + self.restart_gap_s:
            raise TelemetryError("stale_sequence", f"seq {msg.seq} after {last_seq}", rack=rack_id)
        rows = self.topology.rack_slice(rack)
        fleet = self.fleet
        fleet.power_w[rows] = msg.power_w
        fleet.sm_clock_mhz[rows] = msg.sm_clock_mhz
        fleet.util[rows] = msg.util
        fleet.mem_util[rows] = msg.mem_util
        fleet.temp_c[rows] = msg.temp_c
        fleet.cap_w[rows] = msg.cap_w
        fleet.workload_class[rows] = self.classes.codes(msg.classes)[msg.class_idx]
        fleet.rack_power_w[rack] = msg.rack_power_w
        fleet.rack_last_seen_s[rack] = self.clock()
        fleet.rack_seq[rack] = msg.seq
        rejected = msg.cmd_rejected
        self.cmd_rejected[rack] = [rejected.get(r, 0) for r in wire.COMMAND_REJECT_REASONS]
        self._msg_ts_s[rack] = msg.ts_s
