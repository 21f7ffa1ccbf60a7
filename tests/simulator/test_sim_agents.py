"""Rack agents against a real Mosquitto: telemetry out, commands in, fail-safe on TTL expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiomqtt
import numpy as np
import pytest

from controller import wire
from simulator.agents import RackAgents, run_rack_agents
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.scenario import Scenario
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SITE = "simdc"


def small_cluster(*, lag_s: float = 0.5) -> SimCluster:
    scenario = Scenario.model_validate(
        {
            "name": "agents",
            "duration_s": 600,
            "seed": 3,
            "topology": {"gpus": 64, "a100_share": 0.0},
            "physics": {"actuation_lag_s": lag_s, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 48, "iteration_s": 4.0}],
        }
    )
    return build_cluster(scenario, site=SITE)


@contextlib.asynccontextmanager
async def running(agents: RackAgents, broker: Mosquitto) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_rack_agents(
            agents.cluster, host="127.0.0.1", port=broker.port, site=SITE, stop=stop, agents=agents
        )
    )
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 8.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)


def command(rack: str, cap_w: float, n: int, *, ttl_s: float = 30.0) -> bytes:
    return wire.encode_command(
        wire.Command(
            rack=rack,
            seq=1,
            issued_at_s=time.time(),
            ttl_s=ttl_s,
            cap_w=np.full(n, cap_w),
            sm_clock_max_mhz=np.full(n, 1980.0),
        )
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_agents_publish_valid_telemetry_for_every_rack(
    mosquitto: Mosquitto, protocol: str
) -> None:
    cluster = small_cluster()
    agents = RackAgents(
        cluster=cluster,
        site=SITE,
        period_s=0.2,
        protocol=protocol,  # type: ignore[arg-type]
        time_scale=10.0,
    )
    seen: dict[str, wire.Telemetry] = {}
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ctl") as ctl:
        await ctl.subscribe(wire.telemetry_filter(SITE))
        async with running(agents, mosquitto):
            async with asyncio.timeout(8):
                async for msg in ctl.messages:
                    assert isinstance(msg.payload, bytes)
                    rack = wire.rack_from_topic(str(msg.topic))
                    seen[rack] = wire.decode_telemetry(msg.payload, rack=rack, expected_gpus=32)
                    if len(seen) == cluster.topology.n_racks and all(
                        t.seq >= 5 for t in seen.values()
                    ):
                        break
    assert set(seen) == set(cluster.topology.racks.ids)
    first = seen[cluster.topology.racks.ids[0]]
    # Rack 0 holds 32 GPUs of the training job: they draw well above idle (80 W).
    assert first.power_w.mean() > 200.0
    assert set(first.classes) >= {"training", "idle"}
    assert agents.counters.telemetry_sent.min() >= 3
    assert cluster.now_s > 5.0  # the cluster advanced, 10x faster than wall time


async def test_command_is_applied_after_lag_then_falls_back_to_safe_cap(
    mosquitto: Mosquitto,
) -> None:
    cluster = small_cluster(lag_s=0.5)
    agents = RackAgents(cluster=cluster, site=SITE, period_s=0.2, safe_cap_w=300.0, time_scale=4.0)
    rack_id = cluster.topology.racks.ids[0]
    rows = cluster.topology.rack_slice(0)
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ctl") as ctl,
        running(agents, mosquitto),
    ):
        await wait_until(lambda: agents.counters.connects.min() >= 1)
        await asyncio.sleep(0.2)
        await ctl.publish(
            wire.command_topic(SITE, rack_id), command(rack_id, 450.0, 32, ttl_s=1.5), qos=1
        )
        await wait_until(lambda: agents.counters.commands_applied[0] == 1)
        applied_at = time.monotonic()
        await wait_until(lambda: bool(np.all(agents.caps_in_force_w[rows] == 450.0)))
        # The other rack heard nothing and keeps its max caps.
        other = cluster.topology.rack_slice(1)
        assert np.all(agents.caps_in_force_w[other] == 700.0)
        # No fresh command: after ttl_s the agent applies its safe cap on its own.
        await wait_until(lambda: agents.counters.fallbacks[0] == 1, timeout_s=5.0)
        assert time.monotonic() - applied_at >= 1.4
        await wait_until(lambda: bool(np.all(agents.caps_in_force_w[rows] == 300.0)))
    assert agents.counters.fallbacks[1] == 0
    # The GPUs' own limiter brings power down to the safe cap within its settle time.
    assert float(cluster.gpu.power_w[rows].max()) <= 300.0 * 1.05


async def test_bad_commands_are_rejected_and_offline_status_changes_nothing(
    mosquitto: Mosquitto,
) -> None:
    cluster = small_cluster(lag_s=0.0)
    agents = RackAgents(cluster=cluster, site=SITE, period_s=0.2, time_scale=4.0)
    rack_id = cluster.topology.racks.ids[1]
    rows = cluster.topology.rack_slice(1)
    topic = wire.command_topic(SITE, rack_id)
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ctl") as ctl,
        running(agents, mosquitto),
    ):
        await wait_until(lambda: agents.counters.connects.min() >= 1)
        await asyncio.sleep(0.2)
        await ctl.publish(topic, command(rack_id, 500.0, 32, ttl_s=60.0), qos=1)
        await wait_until(lambda: agents.counters.commands_applied[1] == 1)
        await ctl.publish(topic, b"{not json", qos=1)
        await ctl.publish(topic, command(rack_id, 400.0, 31), qos=1)  # wrong length
        await ctl.publish(topic, command("r99999", 400.0, 32), qos=1)  # someone else's rack
        await wait_until(lambda: agents.counters.commands_rejected[1] == 3)
        status = wire.Status(state="offline", ts_s=time.time(), controller="c1")
        await ctl.publish(wire.status_topic(SITE), wire.encode_status(status), qos=1)
        await wait_until(lambda: agents.counters.offline_seen >= 1)
        await asyncio.sleep(0.3)
    np.testing.assert_array_equal(agents.caps_in_force_w[rows], 500.0)
    assert agents.counters.fallbacks.sum() == 0
    assert agents.counters.commands_applied[1] == 1


async def test_agents_reconnect_after_a_broker_restart_and_fail_safe_meanwhile(
    mosquitto: Mosquitto,
) -> None:
    cluster = small_cluster(lag_s=0.0)
    agents = RackAgents(cluster=cluster, site=SITE, period_s=0.2, safe_cap_w=350.0, time_scale=4.0)
    rack_id = cluster.topology.racks.ids[0]
    rows = cluster.topology.rack_slice(0)
    async with running(agents, mosquitto):
        await wait_until(lambda: agents.counters.connects.min() >= 1)
        await asyncio.sleep(0.2)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="ctl") as ctl:
            await ctl.publish(
                wire.command_topic(SITE, rack_id), command(rack_id, 500.0, 32, ttl_s=1.0), qos=1
            )
            await wait_until(lambda: agents.counters.commands_applied[0] == 1)
        # The broker goes away: no command can refresh, the agent falls back on its own.
        await asyncio.to_thread(mosquitto.restart, 1.5)
        await wait_until(lambda: agents.counters.fallbacks[0] == 1)
        await wait_until(lambda: bool(np.all(agents.caps_in_force_w[rows] == 350.0)))
        await wait_until(lambda: agents.counters.connects.min() >= 2, timeout_s=15.0)
        sent = agents.counters.telemetry_sent.copy()
        await wait_until(lambda: bool(np.all(agents.counters.telemetry_sent > sent + 2)))
