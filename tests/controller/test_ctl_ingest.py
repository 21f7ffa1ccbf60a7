"""Ingest: slice writes, every rejection reason, the replay/restart rule, conflation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import orjson
import pytest

from controller import wire
from controller.ingest import ClassTable, ConflatingQueue, Ingest
from policies.fleet import FleetState
from policies.topology import generate_topology

TOPO = generate_topology(64, site="t")  # two racks of 32 GPUs


def telemetry(rack: str = "r00001", seq: int = 1, ts_s: float = 100.0, n: int = 32) -> dict:
    return {
        "v": 1,
        "rack": rack,
        "seq": seq,
        "ts": ts_s,
        "power_w": [500.0] * n,
        "sm_clock_mhz": [1900.0] * n,
        "util": [0.9] * n,
        "mem_util": [0.3] * n,
        "temp_c": [60.0] * n,
        "cap_w": [700.0] * n,
        "classes": ["training", "inference"],
        "class_idx": [0] * (n - 1) + [1],
        "rack_power_w": 20000.0,
    }


def make_ingest(now_s: float = 1000.0) -> Ingest:
    return Ingest(
        TOPO, FleetState.empty(TOPO), ClassTable(), restart_gap_s=1.0, clock=lambda: now_s
    )


def send(ingest: Ingest, obj: dict | bytes, rack: str = "r00001") -> bool:
    payload = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return ingest.handle(wire.telemetry_topic("t", rack), payload)


def test_accepted_message_writes_only_its_racks_rows() -> None:
    ingest = make_ingest()
    assert send(ingest, telemetry())
    fleet = ingest.fleet
    np.testing.assert_array_equal(fleet.power_w[32:], 500.0)
    np.testing.assert_array_equal(fleet.power_w[:32], TOPO.gpu_max_cap_w[:32])  # untouched
    assert fleet.rack_power_w.tolist() == [0.0, 20000.0]
    assert fleet.rack_last_seen_s[1] == 1000.0  # the controller's clock, not the agent's
    assert fleet.rack_seq[1] == 1
    names = ingest.classes.names
    assert [names[c] for c in fleet.workload_class[[32, 63]]] == ["training", "inference"]
    assert fleet.workload_class[0] == 0  # unreported GPUs stay unknown


def _with(**changes: object) -> dict:
    return telemetry() | changes


@pytest.mark.parametrize(
    ("payload", "rack", "reason"),
    [
        (b"\x00\xffgarbage", "r00001", "malformed"),
        (b"[1, 2]", "r00001", "malformed"),
        (b"x" * (10 * 1024 * 1024), "r00001", "too_large"),
        (_with(v=2), "r00001", "wrong_version"),
        (_with(power_w=[500.0] * 31), "r00001", "wrong_length"),
        (telemetry(n=33), "r00001", "wrong_length"),
        # orjson (the agents' encoder) writes a NaN reading as null, which decodes to NaN
        (_with(power_w=[float("nan")] * 32), "r00001", "non_finite"),
        (_with(temp_c=[400.0] * 32), "r00001", "out_of_range"),
        (_with(util=[1.5] * 32), "r00001", "out_of_range"),
        (_with(rack="r00099"), "r00099", "unknown_rack"),
        (_with(rack="r00000"), "r00001", "malformed"),  # body and topic disagree
    ],
)
def test_rejections_are_counted_by_reason(payload: dict | bytes, rack: str, reason: str) -> None:
    ingest = make_ingest()
    before = ingest.fleet.power_w.copy()
    assert not send(ingest, payload, rack)
    assert ingest.counters.rejected[reason] == 1
    assert sum(ingest.counters.rejected.values()) == 1
    np.testing.assert_array_equal(ingest.fleet.power_w, before)  # nothing half-written


def test_replayed_sequence_is_rejected_but_an_agent_restart_is_accepted() -> None:
    ingest = make_ingest()
    assert send(ingest, telemetry(seq=5, ts_s=100.0))
    assert not send(ingest, telemetry(seq=5, ts_s=100.0))  # exact replay
    assert not send(ingest, telemetry(seq=3, ts_s=99.0))  # an older message
    assert not send(ingest, telemetry(seq=1, ts_s=100.5))  # low seq, barely newer: suspicious
    assert ingest.counters.rejected["stale_sequence"] == 3
    assert send(ingest, telemetry(seq=1, ts_s=130.0))  # restarted agent: seq reset, new time
    assert ingest.fleet.rack_seq[1] == 1
    assert send(ingest, telemetry(seq=2, ts_s=131.0))


@dataclass
class _Msg:
    topic: str
    payload: bytes


async def test_conflating_queue_keeps_the_newest_message_per_topic() -> None:
    queue = ConflatingQueue()
    for i in range(5):
        queue.put_nowait(_Msg("a", bytes([i])))
    queue.put_nowait(_Msg("b", b"b"))
    assert queue.qsize() == 2
    assert queue.conflated == 4
    first = await queue.get()
    assert (first.topic, first.payload) == ("a", bytes([4]))
    queue.task_done()
    assert queue.get_nowait().topic == "b"
    queue.task_done()
    assert queue.empty()
    async with asyncio.timeout(1):
        await queue.join()  # replaced messages do not leave phantom unfinished work
