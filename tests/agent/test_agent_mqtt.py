"""The node agent over the `sim` backend against a real Mosquitto: telemetry, commands, watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiomqtt
import numpy as np
import orjson
import pytest

from agent.config import AgentConfig
from agent.node import NodeAgent
from agent.run import run_agent
from controller import wire
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.gpu_backend import SimGpuBackend
from simulator.scenario import Scenario
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SITE = "agentdc"
RACK = "r00000"


def one_rack() -> SimCluster:
    """One rack of two 8-GPU servers (s000000, s000001)."""
    scenario = Scenario.model_validate(
        {
            "name": "node-agents",
            "duration_s": 3600,
            "seed": 5,
            "topology": {"gpus": 16, "a100_share": 0.0, "servers_per_rack": 2},
            "physics": {"actuation_lag_s": 0.1, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 16, "iteration_s": 4.0}],
        }
    )
    return build_cluster(scenario, site=SITE)


def make_agents(cluster: SimCluster, port: int, **over) -> list[NodeAgent]:
    agents = []
    for server in range(2):
        backend = SimGpuBackend(cluster, server=server, step_cluster=server == 0)
        config = AgentConfig.model_validate(
            {
                "site": SITE,
                "rack": RACK,
                "node": backend.hostname,
                "first_gpu": 8 * server,
                "rack_gpus": 16,
                "backend": "sim",
                "period_s": 0.2,
                "safe_cap_w": 250.0,
                "mqtt": {"host": "127.0.0.1", "port": port, "max_backoff_s": 0.5},
            }
            | over
        )
        agents.append(NodeAgent(config=config, backend=backend, classes=backend.workload_classes))
    return agents


@contextlib.asynccontextmanager
async def running(agents: list[NodeAgent]) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_agent(a, stop)) for a in agents]
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 8.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def applied(agent: NodeAgent) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the agent's sim backend was asked, in order (its last `APPLIED_KEPT` calls)."""
    backend = agent.backend
    assert isinstance(backend, SimGpuBackend)
    return list(backend.applied)


def command(seq: int, *, caps: float | list[float], ttl_s: float = 30.0, **extra) -> bytes:
    cap_w = caps if isinstance(caps, list) else [caps] * 16
    body = {
        "v": 1,
        "rack": RACK,
        "epoch": 1,
        "ctl": "ctl-a",
        "seq": seq,
        "issued_at": time.time(),
        "ttl_s": ttl_s,
        "cap_w": cap_w,
        "sm_clock_max_mhz": [1500.0] * 16,
    }
    return orjson.dumps(body | extra)


async def test_telemetry_identities_and_commands_round_trip(mosquitto: Mosquitto):
    cluster = one_rack()
    agents = make_agents(cluster, mosquitto.port)
    seen: dict[str, wire.NodeTelemetry] = {}
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port) as ctl,
        running(agents),
    ):
        await ctl.subscribe(wire.node_telemetry_filter(SITE))

        async def listen() -> None:
            async for msg in ctl.messages:
                rack, node = str(msg.topic).split("/")[-2:]
                seen[node] = wire.decode_node_telemetry(bytes(msg.payload), rack=rack, node=node)

        listener = asyncio.create_task(listen())
        listener.add_done_callback(lambda t: t.cancelled() or t.exception())
        await wait_until(lambda: len(seen) == 2 and all(a.connects for a in agents))
        first = seen["s000000"]
        assert first.uuid[0] == f"GPU-sim-{SITE}-s000000-00"
        assert first.name[0] == "NVIDIA H100 80GB HBM3"
        assert first.gpu_index == tuple(range(8))
        assert "training" in first.classes
        caps = [300.0 + 10 * i for i in range(16)]
        await ctl.publish(wire.command_topic(SITE, RACK), command(5, caps=caps), qos=1)
        await wait_until(lambda: all(len(applied(a)) == 1 for a in agents))
        assert all(a.gate.accepted == 1 for a in agents)
        np.testing.assert_array_equal(applied(agents[1])[-1][0], caps[8:])
        await wait_until(lambda: np.allclose(cluster.cap_w, caps))  # after the actuation lag
        await ctl.publish(wire.command_topic(SITE, RACK), command(4, caps=600.0), qos=1)  # stale
        await ctl.publish(wire.command_topic(SITE, RACK), command(6, caps=600.0, epoch=0), qos=1)
        await wait_until(
            lambda: (
                seen["s000001"].cmd_rejected == {"stale_seq": 1, "stale_epoch": 1}
                and seen["s000001"].cmd_seq == 5
                and seen["s000001"].cmd_epoch == 1
            )
        )
        np.testing.assert_array_equal(seen["s000001"].cap_cmd_w, caps[8:])
        np.testing.assert_allclose(seen["s000001"].cap_w, caps[8:])
        listener.cancel()
    # A clean stop restores what each agent found: max caps, clocks released.
    last_caps, last_clocks = applied(agents[0])[-1]
    np.testing.assert_array_equal(last_caps, np.full(8, 700.0))
    np.testing.assert_array_equal(last_clocks, np.full(8, 1980.0))


async def test_watchdog_applies_the_commands_safe_caps_at_the_ttl_with_the_broker_gone(
    mosquitto: Mosquitto,
):
    cluster = one_rack()
    agents = make_agents(cluster, mosquitto.port)
    ttl_s = 1.5
    safe = [220.0 + i for i in range(16)]
    async with running(agents):
        await wait_until(lambda: all(a.connects for a in agents))
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as ctl:
            payload = command(1, caps=500.0, ttl_s=ttl_s, safe_cap_w=safe)
            sent = time.monotonic()
            await ctl.publish(wire.command_topic(SITE, RACK), payload, qos=1)
            await wait_until(lambda: all(a.gate.accepted for a in agents))
        mosquitto.stop()  # the controller and the broker are gone
        await wait_until(lambda: all(len(applied(a)) == 2 for a in agents), timeout_s=5.0)
        fell_back = time.monotonic() - sent
        assert all(a.gate.fallback for a in agents)
        for i, agent in enumerate(agents):
            np.testing.assert_array_equal(applied(agent)[-1][0], safe[8 * i : 8 * i + 8])
        assert ttl_s <= fell_back <= ttl_s + 0.5, fell_back
        mosquitto.start()  # back within the backoff cap (0.5 s here), telemetry says fallback
        await wait_until(lambda: all(a.connects == 2 for a in agents), timeout_s=5.0)


async def test_configured_safe_cap_without_one_in_the_command(mosquitto: Mosquitto):
    agents = make_agents(one_rack(), mosquitto.port)
    async with running(agents), aiomqtt.Client("127.0.0.1", mosquitto.port) as ctl:
        await wait_until(lambda: all(a.connects for a in agents))
        # An agent counts its connection before its subscription lands: send until it is heard
        # (a repeat of the same seq is refused as stale, not applied again).
        async with asyncio.timeout(5.0):
            while not all(applied(a) for a in agents):
                await ctl.publish(wire.command_topic(SITE, RACK), command(1, caps=500.0, ttl_s=0.5))
                await asyncio.sleep(0.05)
        await wait_until(lambda: all(len(applied(a)) == 2 for a in agents))
        assert all(a.gate.fallbacks == 1 for a in agents)
        np.testing.assert_array_equal(applied(agents[0])[-1][0], np.full(8, 250.0))


async def test_node_topic_command_and_read_only(mosquitto: Mosquitto):
    cluster = one_rack()
    writer, reader = make_agents(cluster, mosquitto.port)
    reader.config = reader.config.model_copy(update={"read_only": True})
    async with running([writer, reader]), aiomqtt.Client("127.0.0.1", mosquitto.port) as ctl:
        await wait_until(lambda: writer.connects and reader.telemetry_sent >= 2)
        node_cmd = orjson.loads(command(3, caps=[400.0] * 8)) | {"node": "s000000"}
        node_cmd["sm_clock_max_mhz"] = [1500.0] * 8
        await ctl.publish(
            wire.node_command_topic(SITE, RACK, "s000000"), orjson.dumps(node_cmd), qos=1
        )
        await ctl.publish(wire.command_topic(SITE, RACK), command(9, caps=300.0), qos=1)
        await wait_until(lambda: len(applied(writer)) == 2)
        await asyncio.sleep(0.3)
        assert reader.gate.accepted == 0  # read-only: not even subscribed
    assert applied(reader) == []
    assert applied(writer)[0][0].tolist() == [400.0] * 8
