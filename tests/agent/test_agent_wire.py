"""Node-level messages: round trips and the hostile inputs each decoder refuses, with reasons."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from controller import wire
from policies.errors import TelemetryError


def node_msg(**over) -> wire.NodeTelemetry:
    n = 2
    fields = {
        "rack": "r1",
        "node": "gpu-a01",
        "hostname": "gpu-a01.example.org",
        "seq": 3,
        "ts_s": 1.7e9,
        "boot": "b0",
        "gpu_index": (0, 1),
        "uuid": ("GPU-aaa", "GPU-bbb"),
        "pci_bus_id": ("00000000:18:00.0", "00000000:2A:00.0"),
        "name": ("NVIDIA H100 80GB HBM3",) * n,
        "power_w": np.array([600.0, 610.0]),
        "power_instant_w": np.array([np.nan, 612.0]),
        "energy_j": np.array([1e6, 2e6]),
        "sm_clock_mhz": np.array([1980.0, 1900.0]),
        "util": np.array([0.9, 1.0]),
        "mem_util": np.array([0.3, 0.4]),
        "temp_c": np.array([60.0, 61.0]),
        "cap_w": np.array([700.0, 650.0]),
        "cap_cmd_w": np.array([np.nan, 650.0]),
        "sm_clock_max_mhz": np.array([1980.0, 1980.0]),
        "min_cap_w": np.array([200.0, 200.0]),
        "max_cap_w": np.array([700.0, 700.0]),
        "classes": ("training",),
        "class_idx": np.zeros(n, np.int64),
        "node_power_w": 5600.0,
        "cmd_epoch": 2,
        "cmd_seq": 9,
        "cmd_rejected": {"stale_seq": 1},
        "fallback": False,
    }
    return wire.NodeTelemetry(**(fields | over))


def test_node_telemetry_round_trip_keeps_nan_as_null():
    payload = wire.encode_node_telemetry(node_msg())
    assert orjson.loads(payload)["power_instant_w"] == [None, 612.0]
    back = wire.decode_node_telemetry(payload, rack="r1", node="gpu-a01")
    assert back.uuid == ("GPU-aaa", "GPU-bbb")
    assert np.isnan(back.power_instant_w[0])
    assert np.isnan(back.cap_cmd_w[0])
    assert back.cmd_rejected == {"stale_seq": 1}
    assert back.node_power_w == 5600.0
    np.testing.assert_array_equal(back.cap_w, [700.0, 650.0])


def mutated(**changes) -> bytes:
    obj = orjson.loads(wire.encode_node_telemetry(node_msg()))
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"seq": 2**53}, "out_of_range"),
        ({"seq": True}, "out_of_range"),
        ({"cmd_epoch": -1}, "out_of_range"),
        ({"boot": "x" * 65}, "malformed"),
        ({"boot": "a b"}, "malformed"),
        ({"uuid": ["GPU-aaa"]}, "wrong_length"),
        ({"power_w": [1.0]}, "wrong_length"),
        ({"power_w": [1.0, 1e9]}, "out_of_range"),
        ({"power_instant_w": [None, -5.0]}, "out_of_range"),
        ({"energy_j": [None, "x"]}, "malformed"),
        ({"cmd_rejected": {"bogus": 1}}, "malformed"),
        ({"cmd_rejected": {"stale_seq": 2**60}}, "out_of_range"),
        ({"fallback": 1}, "malformed"),
        ({"gpu_index": [0, 0]}, "out_of_range"),
        ({"gpu_index": list(range(65))}, "wrong_length"),
        ({"class_idx": [0, 1]}, "out_of_range"),
        ({"node_power_w": 1e12}, "out_of_range"),
        ({"hostname": ""}, "malformed"),
        ({"v": 2}, "wrong_version"),
        ({"power_w": [10**400, 1.0]}, "malformed"),
    ],
)
def test_hostile_node_telemetry_is_rejected_with_its_reason(changes, reason):
    with pytest.raises(TelemetryError) as err:
        wire.decode_node_telemetry(mutated(**changes), rack="r1", node="gpu-a01")
    assert err.value.reason == reason


def test_node_telemetry_topic_must_match_body():
    with pytest.raises(TelemetryError):
        wire.decode_node_telemetry(wire.encode_node_telemetry(node_msg()), rack="r1", node="other")


def rack_command(**over) -> bytes:
    body = {
        "v": 1,
        "rack": "r1",
        "epoch": 3,
        "ctl": "ctl-1",
        "seq": 7,
        "issued_at": 1.7e9,
        "ttl_s": 30.0,
        "cap_w": [100.0, 200.0, 300.0, 400.0],
        "sm_clock_max_mhz": [1000.0, 1100.0, 1200.0, 1300.0],
        "safe_cap_w": [210.0, 220.0, 230.0, 240.0],
    }
    return json.dumps(body | over).encode()


def decode(payload: bytes, *, node_topic: bool = False) -> wire.NodeCommand:
    return wire.decode_node_command(
        payload, rack="r1", node="n2", first=2, count=2, rack_gpus=4, node_topic=node_topic
    )


def test_rack_command_is_sliced_to_the_node():
    cmd = decode(rack_command())
    np.testing.assert_array_equal(cmd.cap_w, [300.0, 400.0])
    np.testing.assert_array_equal(cmd.sm_clock_max_mhz, [1200.0, 1300.0])
    assert cmd.safe_cap_w is not None
    np.testing.assert_array_equal(cmd.safe_cap_w, [230.0, 240.0])
    assert (cmd.epoch, cmd.ctl, cmd.seq) == (3, "ctl-1", 7)


def test_node_command_round_trip_on_its_topic():
    cmd = decode(rack_command())
    payload = wire.encode_node_command(cmd, node="n2")
    again = decode(payload, node_topic=True)
    np.testing.assert_array_equal(again.cap_w, cmd.cap_w)
    with pytest.raises(wire.CommandRejectedError) as err:
        decode(payload)  # a node body on the rack topic
    assert err.value.reason == "wrong_rack"


def test_command_without_ha_fields_is_epoch_zero():
    body = orjson.loads(rack_command())
    del body["epoch"], body["ctl"]
    cmd = decode(orjson.dumps(body))
    assert (cmd.epoch, cmd.ctl) == (0, "")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"v": 9}, "wrong_version"),
        ({"rack": "r2"}, "wrong_rack"),
        ({"node": "n9"}, "wrong_rack"),
        ({"cap_w": [1.0, 2.0, 3.0]}, "wrong_length"),
        ({"cap_w": [1.0, 2.0, 3.0, 1e9]}, "out_of_range"),
        ({"cap_w": [1.0, 2.0, 3.0, None]}, "malformed"),
        ({"seq": 2**53}, "out_of_range"),
        ({"seq": -1}, "out_of_range"),
        ({"epoch": True}, "out_of_range"),
        ({"ctl": "has space"}, "malformed"),
        ({"ttl_s": 0}, "out_of_range"),
        ({"ttl_s": 3601}, "out_of_range"),
        ({"ttl_s": "30"}, "malformed"),
        ({"issued_at": 10**400}, "malformed"),  # orjson refuses it as JSON
        ({"safe_cap_w": [1.0]}, "wrong_length"),
    ],
)
def test_hostile_commands_are_rejected_with_their_reason(changes, reason):
    with pytest.raises(wire.CommandRejectedError) as err:
        decode(rack_command(**changes))
    assert err.value.reason == reason


def test_garbage_command_is_malformed():
    for payload in (b"", b"[1]", b"{", b"\xff" * 10):
        with pytest.raises(wire.CommandRejectedError) as err:
            decode(payload)
        assert err.value.reason == "malformed"
