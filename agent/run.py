"""The agent's loop: telemetry out every period, commands in, the TTL watchdog, a clean stop.

Three tasks share one `NodeAgent`:
- `session`: one MQTT connection at a time, reconnecting with jittered exponential backoff capped
  at `mqtt.max_backoff_s` (<= 2 s), so an agent is back within about two seconds of its broker;
  it subscribes to its rack's and its node's command topics and publishes its telemetry;
- `watchdog`: every 50 ms, on the monotonic clock, whether the command in force ran out (it runs
  whether or not the broker is reachable: a lost broker is exactly when it matters);
- backend calls (NVML takes 10-20 ms a call) run in a worker thread, one at a time under a lock
  (`offload`; an in-memory backend such as the simulator's runs them on the loop's thread).
The agent's state and each of its steps are in `agent.node`; this module is its loops.
`run_agents` runs many agents in one process (the simulator's racks) with one shared watchdog.
Telemetry goes out per node (`telemetry/<rack>/<node>`, assembled by the controller from its
inventory), or per rack (`telemetry/<rack>`) where one agent holds its whole rack.
On stop the agent restores the limits and clocks it found at start (not with `--read-only`, which
never sets anything) and closes the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Sequence

import aiomqtt
import structlog

from agent.backend import BackendError
from agent.node import NodeAgent
from controller import wire

log = structlog.get_logger("rheostat.agent")

WATCHDOG_PERIOD_S = 0.05
#: Telemetry periods are drawn from `period_s` times this range (mean `period_s`).
PERIOD_JITTER = (0.95, 1.05)
_PROTOCOLS = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}


def backoff_s(attempt: int, cap_s: float) -> float:
    """Jittered exponential backoff before reconnect `attempt` (1-based), at most `cap_s`."""
    return random.uniform(0.5, 1.0) * min(cap_s, 0.1 * 2.0 ** min(attempt - 1, 10))


class _Stopped(Exception):
    """Ends the session's task group when `stop` is set."""


async def run_agent(agent: NodeAgent, stop: asyncio.Event) -> None:
    """Run until `stop` is set; then restore the defaults found at start and close the backend."""
    await run_agents([agent], stop)


async def run_agents(agents: Sequence[NodeAgent], stop: asyncio.Event) -> None:
    """Run several agents in one process (one MQTT session each, one watchdog for all) until
    `stop` is set; then restore each one's defaults and close its backend."""
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_watchdog(agents, stop), name="agent-watchdog")
            for agent in agents:
                tg.create_task(_session(agent, stop), name=f"agent-{agent.config.node}")
    finally:
        for agent in agents:
            await agent.restore()
            agent.backend.close()


async def _watchdog(agents: Sequence[NodeAgent], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for agent in agents:
            try:
                if agent.offload:
                    await agent.check_watchdog()
                else:
                    agent.check_watchdog_now()
            except Exception:  # the watchdog must outlive any one failure
                log.exception("watchdog check failed", node=agent.config.node)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=WATCHDOG_PERIOD_S)


def _tls(agent: NodeAgent) -> ssl.SSLContext | None:
    tls = agent.config.mqtt.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


async def _session(agent: NodeAgent, stop: asyncio.Event) -> None:
    cfg, mq = agent.config, agent.config.mqtt
    attempt = 0
    while not stop.is_set():
        try:
            password = agent.mqtt_password or mq.password()
            async with aiomqtt.Client(
                mq.host,
                mq.port,
                username=mq.username or (cfg.rack if password is not None else None),
                password=password,
                tls_context=agent.tls_context or _tls(agent),
                identifier=f"rheostat-agent-{cfg.site}-{cfg.rack}-{cfg.node}",
                protocol=_PROTOCOLS[mq.protocol],
                keepalive=mq.keepalive_s,
                timeout=5.0,
            ) as client:
                attempt = 0
                agent.connects += 1
                await client.subscribe(wire.status_topic(cfg.site), qos=1)
                if not cfg.read_only:
                    await client.subscribe(wire.command_topic(cfg.site, cfg.rack), qos=1)
                    await client.subscribe(
                        wire.node_command_topic(cfg.site, cfg.rack, cfg.node), qos=1
                    )
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_publish(agent, client, stop))
                    tg.create_task(_receive(agent, client))
                    await stop.wait()
                    raise _Stopped
        except* _Stopped:
            pass
        except* (aiomqtt.MqttError, TimeoutError, OSError) as group:
            log.warning("broker connection lost", error=str(group.exceptions[0]))
        if stop.is_set():
            return
        attempt += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=backoff_s(attempt, mq.max_backoff_s))


async def _publish(agent: NodeAgent, client: aiomqtt.Client, stop: asyncio.Event) -> None:
    cfg = agent.config
    loop = asyncio.get_running_loop()
    next_s = loop.time() + agent.start_offset_s
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=agent.start_offset_s)
    while not stop.is_set():
        try:
            reading, node_w = await agent.reading()
        except BackendError as exc:
            log.warning("reading failed", error=str(exc))
        else:
            topic, payload = agent.encode_telemetry(reading, node_w)
            async with asyncio.timeout(5.0):
                await client.publish(topic, payload, qos=0)
            agent.telemetry_sent += 1
        # Each period is jittered a little (the mean stays `period_s`): agents never lock onto
        # the controller's tick, nor onto one another after starting together.
        next_s = max(next_s + cfg.period_s * random.uniform(*PERIOD_JITTER), loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=next_s - loop.time())


async def _receive(agent: NodeAgent, client: aiomqtt.Client) -> None:
    status = wire.status_topic(agent.config.site)
    async for message in client.messages:
        try:
            if message.topic.matches(status):
                agent.handle_status(bytes(message.payload))
            else:
                await agent.handle_command(str(message.topic), bytes(message.payload))
        except Exception:  # one bad message never stops the agent
            log.exception("command handling failed")
