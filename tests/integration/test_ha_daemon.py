"""Two daemons on one site with etcd: only the leader commands, every command is fenced."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiomqtt
import numpy as np
import orjson
import pytest

from controller import wire
from controller.daemon import Controller
from tests.integration.harness import agents_running, policy_for, running, wait_until
from tests.integration.test_ctl_daemon import SITE, small_cluster
from tests.services import Etcd, Mosquitto

pytestmark = pytest.mark.integration


def ha_yaml(port: int, etcd_url: str, client_id: str) -> str:
    return (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: 96, a100_share: 0}}}}}}\n"
        "control: {tick_period_s: 0.2, command_ttl_s: 8, stale_after_s: 2}\n"
        f"mqtt: {{port: {port}, client_id: {client_id}}}\n"
        "metrics: {port: 0}\n"
        "ha: {backend: etcd, lease_ttl_s: 2, retry_s: 0.2,"
        f" etcd: {{endpoints: ['{etcd_url}']}}}}\n"
    )


@contextlib.asynccontextmanager
async def spy(port: int) -> AsyncIterator[list[tuple[str, dict[str, object]]]]:
    """Every command and status message on the site, decoded, in arrival order."""
    seen: list[tuple[str, dict[str, object]]] = []

    async def listen(client: aiomqtt.Client) -> None:
        def record(message: aiomqtt.Message) -> None:
            seen.append((str(message.topic), orjson.loads(bytes(message.payload))))

        async for message in client.messages:
            record(message)

    async with aiomqtt.Client("127.0.0.1", port, identifier="spy") as client:
        await client.subscribe(wire.command_filter(SITE), qos=1)
        await client.subscribe(wire.status_topic(SITE), qos=1)
        task = asyncio.create_task(listen(client))
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_only_the_leader_commands_and_a_standby_takes_over(
    mosquitto: Mosquitto, etcd: Etcd
) -> None:
    cluster = small_cluster()
    a = Controller(policy_for(cluster, ha_yaml(mosquitto.port, etcd.url, "ctl-a")))
    b = Controller(policy_for(cluster, ha_yaml(mosquitto.port, etcd.url, "ctl-b")))
    async with (
        spy(mosquitto.port) as seen,
        agents_running(cluster, mosquitto.port, site=SITE) as agents,
        contextlib.AsyncExitStack() as stack,
    ):
        stop_a = await stack.enter_async_context(contextlib.AsyncExitStack())
        await stop_a.enter_async_context(running(a))
        await wait_until(a.ha.is_leader)
        await stack.enter_async_context(running(b))
        await wait_until(lambda: bool(np.all(agents.counters.commands_applied >= 3)))
        # The standby decides every tick too, but sends nothing.
        await wait_until(lambda: b.runtime.decision is not None)
        assert b.runtime.book.sent_total == 0
        assert not b.ha.is_leader()
        assert b.ha.epoch() == a.ha.epoch() > 0
        commands = [m for t, m in seen if "/command/" in t]
        assert {m["ctl"] for m in commands} == {a.ha.instance}
        assert {m["epoch"] for m in commands} == {a.ha.epoch()}
        statuses = [m for t, m in seen if t.endswith("/status")]
        assert statuses
        assert {s["controller"] for s in statuses} == {a.ha.instance}
        assert {s["epoch"] for s in statuses} == {a.ha.epoch()}
        first_epoch = a.ha.epoch()
        await stop_a.aclose()  # a clean stop resigns: b takes over without waiting for the lease
        seen.clear()
        await wait_until(b.ha.is_leader, 2.0)
        applied = agents.counters.commands_applied.copy()
        await wait_until(lambda: bool(np.all(agents.counters.commands_applied > applied)))
        commands = [m for t, m in seen if "/command/" in t]
        assert {m["ctl"] for m in commands} == {b.ha.instance}
        assert {m["epoch"] for m in commands} == {b.ha.epoch()}
        assert b.ha.epoch() > first_epoch
        assert b.ha.term_changes == 1
        statuses = [m for t, m in seen if t.endswith("/status")]
        assert statuses[-1]["controller"] == b.ha.instance
        assert statuses[-1]["state"] == "online"
        assert agents.counters.fallbacks.sum() == 0
    assert not cluster.trips
