"""The simulated cluster's rack agents: the node agent (`agent/`) over the `sim` backend.

Each rack runs one `agent.node.NodeAgent` holding its whole rack (`SimGpuBackend(rack=...)`), with
its own MQTT session on a real broker: it publishes rack-level telemetry, obeys its rack's
command topic and falls back to its safe caps when a command's TTL runs out, by exactly the rules
a real server's agent follows (`agent.gate`, `agent.node`, `agent.run`). `RackAgents` only
builds those agents and reads their state back as per-rack arrays for the tests and the demo; it
adds no rule. The cluster advances in real time, or `time_scale` times faster, in a task beside
the agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from agent.config import AgentConfig, AgentMqtt
from agent.node import NodeAgent
from agent.run import run_agents
from controller import wire
from simulator.cluster import SimCluster
from simulator.gpu_backend import SimGpuBackend, SimRackMeter

MqttProtocol = Literal["3.1.1", "5"]
_PROTOCOLS = ("3.1.1", "5")
#: MQTT keepalive of the simulated agents. Units: s.
KEEPALIVE_S = 10


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class AgentCounters:
    """Per-rack counters (index = rack index in topology order), read from the agents when asked:
    cumulative over `RackAgents.reboot`."""

    telemetry_sent: NDArray[np.int64]
    commands_applied: NDArray[np.int64]
    commands_rejected: NDArray[np.int64]
    fallbacks: NDArray[np.int64]
    connects: NDArray[np.int64]
    offline_seen: int


@dataclass(eq=False, kw_only=True)
class RackAgents:
    """The agents of one cluster, one `NodeAgent` per rack, and their state as per-rack arrays.

    `safe_cap_w` is per GPU (a float is broadcast); by default each GPU's minimum cap, the one
    value that is safe whatever the rest of the fleet does. With `passwords` (rack id ->
    password) each agent logs in as its rack id, which is what the production broker's ACL
    expects (`deploy/mosquitto/acl`); `tls_context` enables TLS. `wall_clock` stamps telemetry
    (tests step it to play an agent whose clock is wrong); `monotonic` times command TTLs.
    `host` and `port` are the broker (`run_rack_agents` sets them).
    """

    cluster: SimCluster
    site: str
    period_s: float = 1.0
    safe_cap_w: NDArray[np.float64] | float | None = None
    protocol: MqttProtocol = "5"
    time_scale: float = 1.0
    passwords: Mapping[str, str] | None = None
    tls_context: ssl.SSLContext | None = None
    wall_clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    host: str = "127.0.0.1"
    port: int = 1883
    nodes: list[NodeAgent] = field(init=False)
    #: Counts of agents restarted by `reboot` (so the counters stay cumulative).
    _base: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        if self.period_s <= 0 or self.time_scale <= 0:
            raise ValueError("period_s and time_scale must be positive")
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(_PROTOCOLS)}")
        topo = self.cluster.topology
        if self.safe_cap_w is None:
            safe = topo.gpu_min_cap_w
        else:
            safe = np.broadcast_to(np.asarray(self.safe_cap_w, np.float64), (topo.n_gpus,))
        self.nodes = [self._node(rack, safe) for rack in range(topo.n_racks)]
        self._base = np.zeros((3, topo.n_racks), dtype=np.int64)

    def _node(self, rack: int, safe_w: NDArray[np.float64]) -> NodeAgent:
        topo = self.cluster.topology
        rack_id = topo.racks.ids[rack]
        rows = topo.rack_slice(rack)
        config = AgentConfig(
            site=self.site,
            rack=rack_id,
            node=rack_id,
            rack_gpus=rows.stop - rows.start,
            backend="sim",
            period_s=self.period_s,
            telemetry="rack",
            safe_cap_w=tuple(safe_w[rows].tolist()),
            mqtt=AgentMqtt(
                host=self.host, port=self.port, protocol=self.protocol, keepalive_s=KEEPALIVE_S
            ),
        )
        backend = SimGpuBackend(self.cluster, rack=rack)
        return NodeAgent(
            config=config,
            backend=backend,
            node_power=SimRackMeter(self.cluster, rack),
            classes=backend.workload_classes,
            clock=self.monotonic,
            wall_clock=self.wall_clock,
            offload=False,  # the cluster is shared by every agent and the clock: one thread
            mqtt_password=None if self.passwords is None else self.passwords.get(rack_id),
            tls_context=self.tls_context,
            # spread racks over the period so the broker sees a steady stream, not a burst
            start_offset_s=self.period_s * rack / max(topo.n_racks, 1),
        )

    def connect_to(self, host: str, port: int) -> None:
        """Point every agent at this broker (before they run)."""
        self.host, self.port = host, port
        for node in self.nodes:
            mqtt = node.config.mqtt.model_copy(update={"host": host, "port": port})
            node.config = node.config.model_copy(update={"mqtt": mqtt})

    # ------------------------------------------------------------------ state, read back
    @property
    def counters(self) -> AgentCounters:
        """A snapshot of the agents' counters (read-only arrays)."""
        nodes = self.nodes
        counters = AgentCounters(
            telemetry_sent=np.array([n.telemetry_sent for n in nodes], dtype=np.int64),
            commands_applied=self._base[0]
            + np.array([n.gate.accepted for n in nodes], dtype=np.int64),
            commands_rejected=self._base[1] + self.rejected.sum(axis=1),
            fallbacks=self._base[2] + np.array([n.gate.fallbacks for n in nodes], dtype=np.int64),
            connects=np.array([n.connects for n in nodes], dtype=np.int64),
            offline_seen=sum(n.offline_seen for n in nodes),
        )
        for array in (
            counters.telemetry_sent,
            counters.commands_applied,
            counters.commands_rejected,
            counters.fallbacks,
            counters.connects,
        ):
            array.setflags(write=False)
        return counters

    @property
    def rejected(self) -> NDArray[np.int64]:
        """`rejected[rack, k]`: refusals for reason k of `wire.COMMAND_REJECT_REASONS` since the
        rack's agent booted (`reboot`)."""
        reasons = wire.COMMAND_REJECT_REASONS
        return np.array(
            [[n.gate.rejected[r] for r in reasons] for n in self.nodes], dtype=np.int64
        ).reshape(len(self.nodes), len(reasons))

    @property
    def on_safe_cap(self) -> NDArray[np.bool_]:
        """Per rack: its agent is on its safe caps (its last command's TTL ran out). Read-only:
        the agents' state is theirs (`start_on_safe_caps` for agents that boot on them)."""
        flags = np.array([n.gate.fallback for n in self.nodes], dtype=bool)
        flags.setflags(write=False)
        return flags

    @property
    def boots(self) -> list[str]:
        return [n.boot for n in self.nodes]

    @property
    def safe_caps_w(self) -> NDArray[np.float64]:
        """Per GPU, the caps each agent falls back to when its command expires: the last
        command's `safe_cap_w` where it carried them, else the configured ones. Units: W."""
        topo = self.cluster.topology
        safe: NDArray[np.float64] = np.concatenate([n.gate.safe_caps() for n in self.nodes])
        return np.clip(safe, topo.gpu_min_cap_w, topo.gpu_max_cap_w)

    @property
    def caps_in_force_w(self) -> NDArray[np.float64]:
        """Caps the GPUs obey right now (after the actuation lag). Units: W."""
        return self.cluster.cap_w

    # ------------------------------------------------------------------ driving one agent
    def start_on_safe_caps(self) -> None:
        """Agents that booted on their safe caps, as they report until first commanded."""
        for node in self.nodes:
            node.gate.fallback = True

    def reboot(self, rack: int) -> None:
        """Restart one rack's agent as a process restart would (`NodeAgent.restart`): a new boot
        id, the telemetry sequence from 1, no command held, counts from zero. Caps stay."""
        gate = self.nodes[rack].gate
        self._base[:, rack] += (gate.accepted, sum(gate.rejected.values()), gate.fallbacks)
        self.nodes[rack].restart()

    def telemetry(self, rack: int) -> wire.Telemetry:
        """This rack's current (delayed, noisy) reading as its agent would publish it."""
        node = self.nodes[rack]
        return node.rack_telemetry(*node.reading_now())

    def handle_command(self, rack: int, payload: bytes) -> bool:
        """What the agent does with `payload` on its rack's command topic; False when refused."""
        topic = wire.command_topic(self.site, self.cluster.topology.racks.ids[rack])
        return self.nodes[rack].handle_command_now(topic, payload)

    def check_expiry(self, now_mono: float) -> NDArray[np.int64]:
        """Run every agent's watchdog at monotonic time `now_mono`; the racks that fell back."""
        fell = [rack for rack, n in enumerate(self.nodes) if n.check_watchdog_now(now_mono)]
        return np.array(fell, dtype=np.int64)


async def run_rack_agents(
    cluster: SimCluster,
    *,
    host: str,
    port: int,
    site: str,
    stop: asyncio.Event,
    period_s: float = 1.0,
    safe_cap_w: NDArray[np.float64] | float | None = None,
    protocol: MqttProtocol = "5",
    time_scale: float = 1.0,
    agents: RackAgents | None = None,
    step_cluster: bool = True,
    passwords: Mapping[str, str] | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> RackAgents:
    """Run one agent per rack (and the cluster's clock) until `stop` is set; return the agents.

    Pass a prepared `agents` to read its state while this runs. With `step_cluster` False the
    caller advances the cluster itself. On stop each agent restores the caps it found at start,
    as a real agent does on a clean stop.
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(_PROTOCOLS)}")
    agents = agents or RackAgents(
        cluster=cluster,
        site=site,
        period_s=period_s,
        safe_cap_w=safe_cap_w,
        protocol=protocol,
        time_scale=time_scale,
        passwords=passwords,
        tls_context=tls_context,
    )
    agents.connect_to(host, port)
    async with asyncio.TaskGroup() as tg:
        if step_cluster:
            tg.create_task(_clock(agents, stop), name="sim-clock")
        tg.create_task(run_agents(agents.nodes, stop), name="agents")
    return agents


async def _clock(agents: RackAgents, stop: asyncio.Event) -> None:
    """Step the cluster so simulated time keeps pace with (scaled) wall time."""
    cluster = agents.cluster
    started = time.monotonic()
    sim0 = cluster.now_s
    while not stop.is_set():
        target = sim0 + (time.monotonic() - started) * agents.time_scale
        while cluster.now_s + cluster.tick_s <= target:
            cluster.step()
        wait_s = (cluster.now_s + cluster.tick_s - target) / agents.time_scale
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(wait_s, 0.001))


async def backoff(stop: asyncio.Event, attempt: int) -> None:
    """Wait before reconnect `attempt` (or until stop): jittered, capped at a few seconds, so a
    rack is back on the broker soon after it returns (`wire.reconnect_delay_s`)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=wire.reconnect_delay_s(attempt))
