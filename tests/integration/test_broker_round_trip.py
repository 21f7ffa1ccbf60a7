"""The wire codec through a real Mosquitto broker: what an agent publishes, the controller reads."""

from __future__ import annotations

import asyncio

import aiomqtt
import numpy as np

from controller import wire
from tests.services import Mosquitto


async def test_telemetry_crosses_a_real_broker(mosquitto: Mosquitto) -> None:
    msg = wire.Telemetry(
        rack="r00003",
        seq=1,
        ts_s=1.0,
        power_w=np.full(8, 500.0),
        sm_clock_mhz=np.full(8, 1980.0),
        util=np.full(8, 1.0),
        mem_util=np.full(8, 0.3),
        temp_c=np.full(8, 70.0),
        cap_w=np.full(8, 700.0),
        classes=("training",),
        class_idx=np.zeros(8, np.int64),
        rack_power_w=6800.0,
    )
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ctl") as sub,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="agent") as pub,
    ):
        await sub.subscribe(wire.telemetry_filter("dc"))
        await pub.publish(wire.telemetry_topic("dc", "r00003"), wire.encode_telemetry(msg))
        async with asyncio.timeout(5):
            async for received in sub.messages:
                assert isinstance(received.payload, bytes)
                rack = wire.rack_from_topic(str(received.topic))
                out = wire.decode_telemetry(received.payload, rack=rack, expected_gpus=8)
                break
    assert out.rack == "r00003"
    np.testing.assert_array_equal(out.power_w, msg.power_w)
