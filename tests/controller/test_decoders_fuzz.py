"""Every decoder of network input, fuzzed: nothing escapes but Rheostat's typed rejections.

Two kinds of input per decoder: arbitrary bytes and JSON values, and a valid message with one
field replaced by a hostile value (huge, negative, fractional or boolean integers, NaN-like
floats, long strings, wrong types, nesting). A decoder either returns a message or raises a
`RheostatError` subclass; anything else (OverflowError, KeyError, ...) is a bug that could stop a
daemon's loop. The handlers behind the decoders (ingest, grid events, jobs) are fuzzed too: they
must never raise at all.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import wire
from controller.config import DemandResponseSection
from controller.grid.manager import GridEvents
from controller.grid.mqtt import GridEventTopic
from controller.grid.openadr import event_from_openadr
from controller.grid.sources import parse_event_message
from controller.grid.store import EventStore
from controller.ingest import ClassTable, Ingest
from controller.jobs import SyncJobs
from controller.snapshot import parse_snapshot
from controller.wire import (
    GpuRange,
    JobReport,
    MeterReading,
    SignalMessage,
    decode_job,
    decode_meter,
    decode_signal,
    encode_job,
    encode_meter,
    encode_signal,
)
from policies.errors import RheostatError
from policies.fleet import FleetState
from policies.topology import generate_topology

TOPO = generate_topology(64, site="t")  # two racks of 32 GPUs
SECTION = DemandResponseSection(store_path=Path("unused.sqlite"))
EXAMPLES = settings(max_examples=200, deadline=None)

HOSTILE: list[Any] = [
    None,
    True,
    False,
    -1,
    0,
    2**53,
    2**63,
    2**64,
    -(2**63) - 1,
    10**400,
    1e308,
    -1e308,
    0.5,
    "",
    "x" * 5000,
    "NaN",
    [],
    [None],
    [2**70],
    {},
    {"a": {"b": [1]}},
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
hostile_values = st.sampled_from(HOSTILE) | json_values


def dumps(value: Any) -> bytes:
    """JSON of `value`; Python's encoder where orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        import json

        return json.dumps(value).encode()


def only_typed_rejections(decode: Callable[[], object]) -> None:
    with contextlib.suppress(RheostatError):
        decode()


def telemetry_obj() -> dict[str, Any]:
    n = 32
    return {
        "v": 1,
        "rack": "r00001",
        "seq": 5,
        "ts": 1000.0,
        "boot": "b1",
        "cmd_epoch": 0,
        "cmd_seq": 3,
        "cmd_rejected": {"stale_seq": 1},
        "fallback": False,
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


def command_obj() -> dict[str, Any]:
    cmd = wire.Command(
        rack="r00001",
        epoch=2,
        ctl="c1-ab",
        seq=9,
        issued_at_s=1000.0,
        ttl_s=30.0,
        cap_w=np.full(4, 500.0),
        sm_clock_max_mhz=np.full(4, 1980.0),
    )
    obj: dict[str, Any] = orjson.loads(wire.encode_command(cmd))
    return obj


def status_obj() -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(
        wire.encode_status(wire.Status(state="online", ts_s=1000.0, controller="c1", epoch=1))
    )
    return obj


def grid_obj() -> dict[str, Any]:
    return {
        "v": 1,
        "action": "create",
        "event_id": "peak-1",
        "start": 1_764_300_000.0,
        "duration_s": 3600,
        "reduction_frac": 0.25,
        "ramp_s": 30,
        "recovery_s": 300,
        "modification": 0,
    }


def job_obj() -> dict[str, Any]:
    report = JobReport(
        job="j",
        ts=1000.0,
        tier=2,
        gpus=(GpuRange(rack="r00001", first=0, count=8),),
        deadline_ts=5000.0,
        owed_s=100.0,
        sync=True,
    )
    obj: dict[str, Any] = orjson.loads(encode_job(report))
    return obj


def signal_obj() -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(
        encode_signal(SignalMessage(ts=1000.0, start_ts=1000.0, slot_s=300.0, values=(1.0, 2.0)))
    )
    return obj


def meter_obj() -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(
        encode_meter(MeterReading(ts=1000.0, facility_w=1e6, it_w=8e5, outdoor_c=30.0))
    )
    return obj


def snapshot_obj() -> dict[str, Any]:
    return {
        "version": 1,
        "now_s": 100.0,
        "topology": {
            "site": "lab",
            "levels": [
                {"name": "server", "ids": ["s0"], "parent": [0], "limit_w": [None]},
                {"name": "rack", "ids": ["r0"], "parent": [0], "limit_w": [2000.0]},
                {"name": "site", "ids": ["lab"], "limit_w": [2600.0]},
            ],
            "gpus": {"model": ["H100-SXM5", "H100-SXM5"], "server": [0, 0]},
        },
        "telemetry": {
            "power_w": [690.0, 650.0],
            "cap_w": [700.0, 700.0],
            "util": [0.95, 0.9],
            "mem_util": [0.4, 0.4],
        },
        "tier": [0, 2],
        "limits": {"site_limit_w": 2400.0},
    }


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a JSON value (dict keys and list indices, the first two of a list)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:2]):
            out += _paths(value, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(obj)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def mutated(make: Callable[[], dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid message with one field (at any depth), or one new key, set to a hostile value."""
    base = make()
    paths = [*_paths(base), ("extra",)]
    return st.builds(lambda p, v: _replace(base, p, v), st.sampled_from(paths), hostile_values)


DECODERS: dict[str, tuple[Callable[[bytes], object], Callable[[], dict[str, Any]]]] = {
    "telemetry": (
        lambda b: wire.decode_telemetry(b, rack="r00001", expected_gpus=32),
        telemetry_obj,
    ),
    "command": (lambda b: wire.decode_command(b, rack="r00001", expected_gpus=4), command_obj),
    "status": (wire.decode_status, status_obj),
    "grid_event": (
        lambda b: parse_event_message(b, now_s=1_764_000_000.0, section=SECTION),
        grid_obj,
    ),
    "job": (lambda b: decode_job(b, job="j"), job_obj),
    "signal": (decode_signal, signal_obj),
    "meter": (decode_meter, meter_obj),
}


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_valid_messages_decode(kind: str) -> None:
    decode, make = DECODERS[kind]
    decode(dumps(make()))


@pytest.mark.parametrize("kind", sorted(DECODERS))
@EXAMPLES
@given(data=st.data())
def test_decoders_raise_only_typed_rejections(kind: str, data: st.DataObject) -> None:
    decode, make = DECODERS[kind]
    payload = data.draw(
        st.one_of(
            st.binary(max_size=200),
            json_values.map(dumps),
            mutated(make).map(dumps),
        )
    )
    only_typed_rejections(lambda: decode(payload))


@EXAMPLES
@given(obj=mutated(snapshot_obj) | json_values)
def test_snapshot_parsing_raises_only_typed_rejections(obj: Any) -> None:
    only_typed_rejections(lambda: parse_snapshot(obj))


def openadr_obj() -> dict[str, Any]:
    return {
        "event_descriptor": {"event_id": "ev-9", "modification_number": 3},
        "active_period": {
            "dtstart": datetime(2026, 7, 14, 22, 0, tzinfo=UTC),
            "duration": timedelta(hours=3),
        },
        "event_signals": [
            {"signal_name": "SIMPLE", "signal_type": "level", "intervals": [{"signal_payload": 1}]}
        ],
    }


openadr_values = hostile_values | st.sampled_from(
    [timedelta(days=10**6), timedelta(0), datetime(9999, 1, 1, tzinfo=UTC), float("nan")]
)


@EXAMPLES
@given(data=st.data())
def test_openadr_mapping_raises_only_typed_rejections(data: st.DataObject) -> None:
    base = openadr_obj()
    path = data.draw(st.sampled_from([*_paths(base), ("extra",)]))
    event = _replace(base, path, data.draw(openadr_values))
    only_typed_rejections(lambda: event_from_openadr(event, now_s=1_784_000_000.0, section=SECTION))


# ------------------------------------------------------------------------------ handlers
ingest = Ingest(TOPO, FleetState.empty(TOPO), ClassTable(), restart_gap_s=1.0, clock=lambda: 1000.0)


@EXAMPLES
@given(obj=mutated(telemetry_obj) | json_values, retopic=st.booleans())
def test_ingest_never_raises(obj: Any, retopic: bool) -> None:
    topic = wire.telemetry_topic("t", "r00099" if retopic else "r00001")
    before = ingest.counters.messages
    ingest.handle(topic, dumps(obj))
    assert ingest.counters.messages == before + 1
    assert ingest.counters.rejected["internal_error"] == 0


@pytest.fixture(scope="module")
def grid_topic(tmp_path_factory: pytest.TempPathFactory) -> GridEventTopic:
    store = EventStore(tmp_path_factory.mktemp("fuzz") / "events.sqlite")
    grid = GridEvents(section=SECTION, store=store)
    return GridEventTopic(site="t", grid=grid, clock=lambda: 1_764_000_000.0)


@settings(max_examples=150, deadline=None)
@given(obj=mutated(grid_obj) | json_values)
def test_grid_event_topic_never_raises(grid_topic: GridEventTopic, obj: Any) -> None:
    assert grid_topic.handle("rheostat/v1/t/grid/event", dumps(obj))
    grid_topic.responses.clear()


jobs = SyncJobs(site="t", topology=TOPO)


@EXAMPLES
@given(obj=mutated(job_obj) | json_values, name=st.text(max_size=200))
def test_job_reports_never_raise(obj: Any, name: str) -> None:
    jobs.handle(f"rheostat/v1/t/jobs/{name}", dumps(obj))
    assert len(jobs.reports) <= jobs.max_jobs


def test_huge_integers_are_out_of_range_not_a_crash() -> None:
    for field in ("seq", "cmd_seq", "cmd_epoch"):
        obj = telemetry_obj() | {field: 2**63}
        with pytest.raises(RheostatError):
            wire.decode_telemetry(orjson.dumps(obj), rack="r00001")
    with pytest.raises(RheostatError, match="modification"):
        parse_event_message(dumps(grid_obj() | {"modification": 2**70}), now_s=0.0, section=SECTION)
    assert math.isclose(wire.MAX_SAFE_INT, 2**53 - 1)
