"""The fleet arrays in one `multiprocessing.shared_memory` segment, as numpy views.

The decision process creates the segment (`SharedFleet.create`); ingest workers attach to it by
name (`SharedFleet.attach`) and write telemetry into the same `FleetState` fields the in-process
ingest writes. A tick snapshots whole arrays (`FleetState.copy`), never rack by rack. What shared
memory does not give is a consistent view of one rack across fields while a worker is writing
it: a snapshot may hold one rack's power from one message and its clocks from the next, two
valid readings one telemetry period apart. Writers of one rack exclude each other (`locks`).

Layout, in order, each field 8-byte aligned: the `FleetState` fields, then per rack the last
accepted message's own timestamp (the restart rule, shared by all workers) and the agent's
command rejections by reason, then per worker its counters (`COUNTERS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller.wire import COMMAND_REJECT_REASONS
from policies.errors import TelemetryError
from policies.fleet import FleetState

#: Counters per worker: messages, accepted, conflated, one per rejection reason, and last
#: `subscribed` (1 while its shared subscription is in place).
COUNTERS = ("messages", "accepted", "conflated", *TelemetryError.REASONS, "subscribed")


Field = tuple[str, "np.dtype[Any]", tuple[int, ...]]
#: `FleetState` fields with one value per rack (the rest have one per GPU).
PER_RACK = frozenset({"rack_power_w", "rack_last_seen_s", "rack_seq"})
DTYPES: dict[str, np.dtype[Any]] = {
    "workload_class": np.dtype(np.int16),
    "rack_seq": np.dtype(np.int64),
}


def _layout(n_gpus: int, n_racks: int, workers: int) -> list[Field]:
    out: list[Field] = []
    for f in fields(FleetState):
        shape = (n_racks,) if f.name in PER_RACK else (n_gpus,)
        out.append((f.name, DTYPES.get(f.name, np.dtype(np.float64)), shape))
    out.append(("msg_ts_s", np.dtype(np.float64), (n_racks,)))
    out.append(("cmd_rejected", np.dtype(np.int64), (n_racks, len(COMMAND_REJECT_REASONS))))
    out.append(("counters", np.dtype(np.int64), (max(workers, 1), len(COUNTERS))))
    return out


@dataclass(eq=False)
class SharedFleet:
    """Views into one segment; `close()` in every process, `unlink()` once, by its creator."""

    memory: shared_memory.SharedMemory
    fleet: FleetState
    msg_ts_s: NDArray[np.float64]
    cmd_rejected: NDArray[np.int64]
    counters: NDArray[np.int64]
    owner: bool

    @property
    def name(self) -> str:
        return self.memory.name

    @classmethod
    def _map(
        cls, memory: shared_memory.SharedMemory, size: tuple[int, int, int], *, owner: bool
    ) -> SharedFleet:
        n_gpus, n_racks, workers = size
        views: dict[str, NDArray[Any]] = {}
        offset = 0
        for name, dtype, shape in _layout(n_gpus, n_racks, workers):
            views[name] = np.ndarray(shape, dtype=dtype, buffer=memory.buf, offset=offset)
            offset += _aligned(math.prod(shape) * dtype.itemsize)
        msg_ts_s, counters = views.pop("msg_ts_s"), views.pop("counters")
        rejected = views.pop("cmd_rejected")
        return cls(memory, FleetState(**views), msg_ts_s, rejected, counters, owner)

    @classmethod
    def create(cls, initial: FleetState, workers: int) -> SharedFleet:
        """A new segment holding a copy of `initial` (an empty fleet, usually)."""
        n_gpus, n_racks = initial.power_w.size, initial.rack_seq.size
        size = sum(
            _aligned(math.prod(shape) * dtype.itemsize)
            for _, dtype, shape in _layout(n_gpus, n_racks, workers)
        )
        memory = shared_memory.SharedMemory(create=True, size=max(size, 1))
        shared = cls._map(memory, (n_gpus, n_racks, workers), owner=True)
        for f in fields(initial):
            getattr(shared.fleet, f.name)[...] = getattr(initial, f.name)
        shared.msg_ts_s[...] = -np.inf
        shared.cmd_rejected[...] = 0
        shared.counters[...] = 0
        return shared

    @classmethod
    def attach(cls, name: str, *, n_gpus: int, n_racks: int, workers: int) -> SharedFleet:
        memory = shared_memory.SharedMemory(name=name)
        return cls._map(memory, (n_gpus, n_racks, workers), owner=False)

    def close(self) -> None:
        """Drop this process's mapping (the views must not be used afterwards)."""
        del self.fleet, self.msg_ts_s, self.cmd_rejected, self.counters
        self.memory.close()
        if self.owner:
            self.memory.unlink()


def _aligned(nbytes: int) -> int:
    return (nbytes + 7) // 8 * 8
