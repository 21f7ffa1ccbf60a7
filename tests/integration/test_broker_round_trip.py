"""The wire codec through a real Mosquitto broker: what an agent publishes, the controller reads."""

from __future__ import annotations

import asyncio

import aiomqtt
import numpy as np
import pytest

from controller import wire
from controller.mqtt_client import Client, topic_payload
from tests.deploy.test_deploy_mosquitto_acl import CONTROLLER, SecuredBroker
from tests.deploy.test_deploy_mosquitto_acl import SITE as ACL_SITE
from tests.deploy.test_deploy_mosquitto_acl import secured as secured  # noqa: PLC0414 - fixture
from tests.deploy.test_deploy_mosquitto_acl import tls_files as tls_files  # noqa: PLC0414
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


@pytest.mark.parametrize(
    ("protocol", "qos"),
    [
        (aiomqtt.ProtocolVersion.V5, 0),
        (aiomqtt.ProtocolVersion.V5, 1),
        (aiomqtt.ProtocolVersion.V311, 0),
    ],
)
async def test_daemon_client_reads_every_packet_of_a_burst_and_confirms_a_batch(
    mosquitto: Mosquitto, protocol: aiomqtt.ProtocolVersion, qos: int
) -> None:
    """Many packets per socket read, some split across reads, and one large one: none lost or
    mangled, at QoS 0 and 1; a batch's future resolves only once the broker has acknowledged
    every message."""
    sizes = [10 + (k * 37) % 3000 for k in range(3000)] + [200_000]
    payloads = [bytes([k % 251]) * size for k, size in enumerate(sizes)]
    async with (
        Client("127.0.0.1", mosquitto.port, identifier="ctl", protocol=protocol) as sub,
        Client("127.0.0.1", mosquitto.port, identifier="agent") as pub,
    ):
        await sub.subscribe("t/#", qos=qos)
        batch = pub.publish_batch(
            ((f"t/{k}", payload) for k, payload in enumerate(payloads)), qos=1
        )
        assert not batch.done()  # nothing is acknowledged before the loop runs
        async with asyncio.timeout(20):
            await batch
            got = [await sub.receive() for _ in payloads]
    assert [topic_payload(m)[0] for m in got] == [f"t/{k}" for k in range(len(payloads))]
    assert [topic_payload(m)[1] for m in got] == payloads
    assert pub.owed == 0  # every acknowledgement was matched


async def test_daemon_client_receive_raises_once_the_broker_is_gone(mosquitto: Mosquitto) -> None:
    async with Client("127.0.0.1", mosquitto.port, identifier="ctl", timeout=2) as sub:
        await sub.subscribe("t/#")
        mosquitto.stop()
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(10):
                await sub.receive()


async def test_daemon_client_commands_a_rack_over_tls_with_a_password(
    secured: SecuredBroker,
) -> None:
    site = ACL_SITE
    async with (
        Client(
            "127.0.0.1",
            secured.tls_port,
            identifier="ctl-tls",
            username=CONTROLLER,
            password=secured.passwords[CONTROLLER],
            tls_params=aiomqtt.TLSParameters(ca_certs=str(secured.ca_file)),
            timeout=5,
        ) as ctl,
        secured.client("r001", tls=True) as rack,
    ):
        await ctl.subscribe(wire.telemetry_filter(site), qos=1)
        await rack.subscribe(wire.command_topic(site, "r001"), qos=1)
        await rack.publish(wire.telemetry_topic(site, "r001"), b"t1", qos=1)
        async with asyncio.timeout(5):
            assert topic_payload(await ctl.receive()) == (wire.telemetry_topic(site, "r001"), b"t1")
            await ctl.publish_batch([(wire.command_topic(site, "r001"), b"c1")], qos=1)
            got = await anext(rack.messages)
        assert (str(got.topic), got.payload) == (wire.command_topic(site, "r001"), b"c1")
        assert ctl.owed == 0


async def test_daemon_client_refuses_a_wrong_password(secured: SecuredBroker) -> None:
    client = Client("127.0.0.1", secured.port, username=CONTROLLER, password="wrong", timeout=5)
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass
