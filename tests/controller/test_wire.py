from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import wire
from policies.errors import ProtocolError, TelemetryError


def make_telemetry(n: int = 4, rack: str = "r00001", seq: int = 7) -> wire.Telemetry:
    return wire.Telemetry(
        rack=rack,
        seq=seq,
        ts_s=1_700_000_000.5,
        power_w=np.linspace(100, 650, n),
        sm_clock_mhz=np.full(n, 1980.0),
        util=np.full(n, 0.9),
        mem_util=np.full(n, 0.4),
        temp_c=np.full(n, 61.0),
        cap_w=np.full(n, 700.0),
        classes=("training", "inference"),
        class_idx=np.arange(n) % 2,
        rack_power_w=4000.0,
    )


def payload_dict(**overrides: object) -> dict[str, object]:
    obj: dict[str, object] = orjson.loads(wire.encode_telemetry(make_telemetry()))
    obj.update(overrides)
    return obj


def test_telemetry_round_trip() -> None:
    msg = make_telemetry()
    out = wire.decode_telemetry(wire.encode_telemetry(msg), rack="r00001", expected_gpus=4)
    assert out.rack == msg.rack
    assert out.seq == msg.seq
    assert out.ts_s == msg.ts_s
    np.testing.assert_array_equal(out.power_w, msg.power_w)
    np.testing.assert_array_equal(out.class_idx, msg.class_idx)
    assert out.classes == msg.classes
    assert out.rack_power_w == msg.rack_power_w


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00\xff garbage", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (b"x" * (wire.MAX_PAYLOAD_BYTES + 1), "too_large"),
        (orjson.dumps(payload_dict(v=2)), "wrong_version"),
        (orjson.dumps(payload_dict(seq=-1)), "out_of_range"),
        (orjson.dumps(payload_dict(seq=2**53)), "out_of_range"),
        (orjson.dumps(payload_dict(seq=2**63)), "out_of_range"),
        (orjson.dumps(payload_dict(ts=-1.0)), "out_of_range"),
        (orjson.dumps(payload_dict(boot="")), "malformed"),
        (orjson.dumps(payload_dict(boot="a" * 65)), "malformed"),
        (orjson.dumps(payload_dict(cmd_seq=2**63)), "out_of_range"),
        (orjson.dumps(payload_dict(cmd_rejected={"bogus": 1})), "malformed"),
        (orjson.dumps(payload_dict(cmd_rejected={"stale_seq": -1})), "out_of_range"),
        (orjson.dumps(payload_dict(fallback=1)), "malformed"),
        (orjson.dumps(payload_dict(classes=["x" * 65])), "out_of_range"),
        (orjson.dumps(payload_dict(classes=["c"] * 257)), "out_of_range"),
        (orjson.dumps(payload_dict(seq=True)), "malformed"),
        (orjson.dumps(payload_dict(power_w=[1, 2, 3])), "wrong_length"),
        (orjson.dumps(payload_dict(power_w=["a", 1, 2, 3])), "malformed"),
        (orjson.dumps(payload_dict(power_w=[[1], [2], [3], [4]])), "malformed"),
        (orjson.dumps(payload_dict(util=[0.1, 0.2, 0.3, 1.5])), "out_of_range"),
        (orjson.dumps(payload_dict(temp_c=[20, 20, 20, -300])), "out_of_range"),
        (orjson.dumps(payload_dict(class_idx=[0, 1, 2, 0])), "out_of_range"),
        (orjson.dumps(payload_dict(class_idx=[0, 1, 0.5, 0])), "out_of_range"),
        (orjson.dumps(payload_dict(classes=[1, 2])), "malformed"),
        (orjson.dumps(payload_dict(rack_power_w="lots")), "malformed"),
        (orjson.dumps(payload_dict(rack="r00002")), "malformed"),
    ],
)
def test_bad_telemetry_is_rejected_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(TelemetryError) as info:
        wire.decode_telemetry(payload, rack="r00001")
    assert info.value.reason == reason


def test_overflowing_number_is_rejected() -> None:
    # JSON has no NaN literal; an overflowing literal is the closest a payload gets to infinity.
    text = wire.encode_telemetry(make_telemetry()).replace(
        b'"rack_power_w":4000.0', b'"rack_power_w":1e999'
    )
    with pytest.raises(TelemetryError) as info:
        wire.decode_telemetry(text)
    assert info.value.reason in {"non_finite", "malformed"}


def test_nan_in_a_gpu_array_is_non_finite() -> None:
    text = wire.encode_telemetry(make_telemetry()).replace(b'"temp_c":[61.0', b'"temp_c":[NaN')
    with pytest.raises(TelemetryError) as info:
        wire.decode_telemetry(text)
    assert info.value.reason in {"non_finite", "malformed"}


def test_expected_length_is_enforced() -> None:
    with pytest.raises(TelemetryError) as info:
        wire.decode_telemetry(wire.encode_telemetry(make_telemetry(n=4)), expected_gpus=8)
    assert info.value.reason == "wrong_length"


@given(
    caps=st.lists(st.floats(min_value=0, max_value=3000), min_size=1, max_size=72),
    seq=st.integers(min_value=0, max_value=wire.MAX_SAFE_INT),
    ttl=st.floats(min_value=0.1, max_value=3600),
    epoch=st.integers(min_value=0, max_value=wire.MAX_SAFE_INT),
)
def test_command_round_trip(caps: list[float], seq: int, ttl: float, epoch: int) -> None:
    cmd = wire.Command(
        rack="r1",
        epoch=epoch,
        ctl="ctl-1:a.b",
        seq=seq,
        issued_at_s=123.25,
        ttl_s=ttl,
        cap_w=np.array(caps),
        sm_clock_max_mhz=np.full(len(caps), 1410.0),
    )
    out = wire.decode_command(wire.encode_command(cmd), rack="r1")
    assert (out.epoch, out.ctl, out.seq) == (epoch, "ctl-1:a.b", seq)
    assert math.isclose(out.ttl_s, ttl)
    np.testing.assert_allclose(out.cap_w, np.round(caps, 1))
    assert out.n_gpus == len(caps)


@pytest.mark.parametrize(
    "change",
    [
        {"ttl_s": 0},
        {"ttl_s": -5},
        {"ttl_s": 3601},
        {"rack": "other"},
        {"cap_w": [1, 2]},
        {"seq": "x"},
        {"seq": 2**63},
        {"epoch": -1},
        {"ctl": ""},
        {"ctl": None},
        {"epoch": None},
        {"ctl": "a b"},
        {"v": 0},
    ],
)
def test_bad_commands_raise_protocol_error(change: dict[str, object]) -> None:
    cmd = wire.Command(
        rack="r1",
        seq=1,
        issued_at_s=1.0,
        ttl_s=30.0,
        cap_w=np.array([300.0]),
        sm_clock_max_mhz=np.array([1410.0]),
    )
    obj = orjson.loads(wire.encode_command(cmd)) | change
    with pytest.raises(ProtocolError):
        wire.decode_command(orjson.dumps(obj), rack="r1")


def test_status_round_trip_and_topics() -> None:
    status = wire.Status(state="offline", ts_s=5.0, controller="c1", epoch=3)
    assert wire.decode_status(wire.encode_status(status)) == status
    with pytest.raises(ProtocolError):
        wire.decode_status(b'{"state": "sleepy"}')
    assert wire.telemetry_topic("dc1", "r7") == "rheostat/v1/dc1/telemetry/r7"
    assert wire.command_topic("dc1", "r7") == "rheostat/v1/dc1/command/r7"
    assert wire.status_topic("dc1") == "rheostat/v1/dc1/controller/status"
    assert wire.rack_from_topic(wire.telemetry_topic("dc1", "r7")) == "r7"
    assert wire.telemetry_filter("dc1") == "rheostat/v1/dc1/telemetry/+"


def test_integer_beyond_float_range_is_malformed_not_a_crash() -> None:
    huge = 10**400  # valid JSON, beyond both 64-bit integers and floats
    for overrides in ({"power_w": [huge, 1, 2, 3]}, {"ts": huge}):
        payload = json.dumps(payload_dict(**overrides)).encode()  # orjson cannot write it
        with pytest.raises(TelemetryError) as info:
            wire.decode_telemetry(payload, rack="r00001")
        assert info.value.reason == "malformed"


@given(
    field=st.sampled_from(sorted(wire.GPU_FIELD_RANGES)),
    offset=st.floats(-2.0, 2.0, allow_nan=False),
    edge=st.sampled_from(["lo", "hi"]),
)
def test_each_gpu_field_is_accepted_exactly_inside_its_range(
    field: str, offset: float, edge: str
) -> None:
    lo, hi = wire.GPU_FIELD_RANGES[field]
    value = (lo if edge == "lo" else hi) + offset
    obj = payload_dict(**{field: [value, value, value, value]})
    payload = orjson.dumps(obj)
    if lo <= value <= hi:
        out = wire.decode_telemetry(payload, rack="r00001", expected_gpus=4)
        np.testing.assert_array_equal(getattr(out, field), np.full(4, value))
        np.testing.assert_array_equal(out.class_idx, [0, 1, 0, 1])
    else:
        with pytest.raises(TelemetryError) as info:
            wire.decode_telemetry(payload, rack="r00001", expected_gpus=4)
        assert info.value.reason == "out_of_range"


def test_empty_rack_decodes_and_ragged_arrays_keep_their_reason() -> None:
    empty = {key: [] for key in (*wire.GPU_FIELD_RANGES, "class_idx")}
    out = wire.decode_telemetry(orjson.dumps(payload_dict(**empty)), expected_gpus=0)
    assert out.n_gpus == 0
    with pytest.raises(TelemetryError) as info:
        wire.decode_telemetry(orjson.dumps(payload_dict(class_idx=[0, 1])))
    assert info.value.reason == "wrong_length"
    with pytest.raises(TelemetryError) as info:
        wire.decode_telemetry(orjson.dumps(payload_dict(rack_power_w=3.0e6)))
    assert info.value.reason == "out_of_range"


def test_batch_command_encoding_matches_single_encoding_byte_for_byte() -> None:
    rng = np.random.default_rng(3)
    caps = rng.uniform(100.0, 700.0, 10)
    clocks = rng.uniform(800.0, 1980.0, 10)
    starts, ends = np.array([0, 3, 3, 7]), np.array([3, 3, 7, 10])  # one rack has no GPUs
    seqs = np.array([1, 2, 2**40, 5])
    batch = wire.encode_commands(
        ["a", "b", "c", "d"],
        seq=seqs,
        issued_at_s=1.7e9 + 0.25,
        ttl_s=30.0,
        cap_w=caps,
        sm_clock_max_mhz=clocks,
        starts=starts,
        ends=ends,
    )
    for i, rack in enumerate("abcd"):
        single = wire.Command(
            rack=rack,
            seq=int(seqs[i]),
            issued_at_s=1.7e9 + 0.25,
            ttl_s=30.0,
            cap_w=caps[starts[i] : ends[i]],
            sm_clock_max_mhz=clocks[starts[i] : ends[i]],
        )
        assert batch[i] == wire.encode_command(single)
        assert wire.decode_command(batch[i], rack=rack).seq == seqs[i]


def test_reconnect_backoff_is_jittered_and_capped_well_inside_a_ttl() -> None:
    delays = [wire.reconnect_delay_s(attempt) for attempt in range(1, 200) for _ in range(5)]
    assert min(delays) >= wire.RECONNECT_FIRST_S / 2
    assert max(delays) <= wire.RECONNECT_MAX_S
    assert len(set(delays)) > 100  # jittered: racks do not reconnect in lockstep
    assert wire.reconnect_delay_s(1) <= wire.RECONNECT_FIRST_S
