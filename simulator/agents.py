"""Simulated rack agents speaking wire protocol v1 over a real MQTT broker.

One MQTT client per rack, as on a real floor: each publishes its rack's telemetry every period,
subscribes to its own command topic, validates commands with `controller.wire.decode_command`,
orders them with `controller.wire.accept_command` (epoch, controller instance, seq: never a wall
clock) and hands caps to the cluster, which enforces them after the actuation lag. Fail-safe: when
a command's `ttl_s` (counted from its arrival, on the agent's monotonic clock) runs out with
nothing newer, the agent applies its configured safe cap by itself. Telemetry carries the agent's
boot id, the (epoch, seq) of the last command applied, cumulative rejections by reason and whether
the rack is on its safe caps. The controller's `offline` status is logged and counted but changes
nothing, so a controller restart or a standby taking over costs nothing.

The cluster advances in real time, or `time_scale` times faster, in a task beside the agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import aiomqtt
import numpy as np
import structlog
from numpy.typing import NDArray

from controller import wire
from policies.errors import ProtocolError
from simulator.cluster import SimCluster
from simulator.workloads import CLASSES

log = structlog.get_logger("rheostat.simulator.agents")

MqttProtocol = Literal["3.1.1", "5"]
_PROTOCOLS = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}
#: How often the fail-safe watchdog looks at command expiry. Units: s.
WATCHDOG_PERIOD_S = 0.05


@dataclass(eq=False, kw_only=True)
class AgentCounters:
    """Per-rack counters the tests and the demo read (index = rack index in topology order)."""

    telemetry_sent: NDArray[np.int64]
    commands_applied: NDArray[np.int64]
    commands_rejected: NDArray[np.int64]
    fallbacks: NDArray[np.int64]
    connects: NDArray[np.int64]
    offline_seen: int = 0

    @classmethod
    def zeros(cls, n_racks: int) -> AgentCounters:
        def z() -> NDArray[np.int64]:
            return np.zeros(n_racks, dtype=np.int64)

        return cls(
            telemetry_sent=z(),
            commands_applied=z(),
            commands_rejected=z(),
            fallbacks=z(),
            connects=z(),
        )


@dataclass(eq=False, kw_only=True)
class RackAgents:
    """The agents of one cluster: their configuration, counters and command bookkeeping.

    `safe_cap_w` is per GPU (a float is broadcast); by default each GPU's minimum cap, the one
    value that is safe whatever the rest of the fleet does. `expires_at` is monotonic seconds.
    With `passwords` (rack id -> password) each agent logs in as its rack id, which is what the
    production broker's ACL expects (`deploy/mosquitto/acl`); `tls_context` enables TLS.
    `wall_clock` stamps telemetry (tests step it to play an agent whose clock is wrong);
    `monotonic` times command TTLs. `rejected[rack, k]` counts refusals for reason k of
    `wire.COMMAND_REJECT_REASONS` since the rack's agent booted (`reboot`).
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
    counters: AgentCounters = field(init=False)
    expires_at: NDArray[np.float64] = field(init=False)
    on_safe_cap: NDArray[np.bool_] = field(init=False)
    held: list[wire.HeldCommand | None] = field(init=False)
    boots: list[str] = field(init=False)
    rejected: NDArray[np.int64] = field(init=False)
    _safe_w: NDArray[np.float64] = field(init=False)
    _seq: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        if self.period_s <= 0 or self.time_scale <= 0:
            raise ValueError("period_s and time_scale must be positive")
        topo = self.cluster.topology
        n_racks = topo.n_racks
        self.counters = AgentCounters.zeros(n_racks)
        self.expires_at = np.full(n_racks, np.inf)
        self.on_safe_cap = np.zeros(n_racks, dtype=bool)
        self.held = [None] * n_racks
        self.boots = [_boot_id() for _ in range(n_racks)]
        self.rejected = np.zeros((n_racks, len(wire.COMMAND_REJECT_REASONS)), dtype=np.int64)
        self._seq = np.zeros(n_racks, dtype=np.int64)
        if self.safe_cap_w is None:
            safe = topo.gpu_min_cap_w.copy()
        else:
            safe = np.broadcast_to(np.asarray(self.safe_cap_w, np.float64), (topo.n_gpus,)).copy()
        self._safe_w = np.clip(safe, topo.gpu_min_cap_w, topo.gpu_max_cap_w)

    @property
    def safe_caps_w(self) -> NDArray[np.float64]:
        """Per GPU, the caps each agent falls back to when its command expires: the last
        command's `safe_cap_w` where it carried them, else the configured ones. Units: W.
        """
        return self._safe_w.copy()

    @property
    def caps_in_force_w(self) -> NDArray[np.float64]:
        """Caps the GPUs obey right now (after the actuation lag). Units: W."""
        return self.cluster.cap_w

    def reboot(self, rack: int) -> None:
        """Restart one rack's agent as a process restart would: a new boot id, the telemetry
        sequence from 1, no command held, counts from zero. Caps already applied stay."""
        self.boots[rack] = _boot_id()
        self._seq[rack] = 0
        self.held[rack] = None
        self.rejected[rack] = 0
        self.expires_at[rack] = np.inf

    def telemetry(self, rack: int) -> wire.Telemetry:
        """This rack's current (delayed, noisy) reading as a wire message."""
        topo = self.cluster.topology
        rows = topo.rack_slice(rack)
        reading = self.cluster.reading()
        self._seq[rack] += 1
        held = self.held[rack]
        counts = self.rejected[rack].tolist()
        return wire.Telemetry(
            boot=self.boots[rack],
            cmd_epoch=None if held is None else held.epoch,
            cmd_seq=None if held is None else held.seq,
            cmd_rejected={
                reason: n
                for reason, n in zip(wire.COMMAND_REJECT_REASONS, counts, strict=True)
                if n
            },
            fallback=bool(self.on_safe_cap[rack]),
            rack=topo.racks.ids[rack],
            seq=int(self._seq[rack]),
            ts_s=self.wall_clock(),
            power_w=reading.power_w[rows],
            sm_clock_mhz=reading.sm_clock_mhz[rows],
            util=reading.util[rows],
            mem_util=reading.mem_util[rows],
            temp_c=reading.temp_c[rows],
            cap_w=reading.cap_w[rows],
            classes=CLASSES,
            class_idx=self.cluster.workloads.gpu_class()[rows].astype(np.int64),
            rack_power_w=float(reading.rack_power_w[rack]),
        )

    def handle_command(self, rack: int, payload: bytes) -> bool:
        """Validate, order and apply one command; False (and counted by reason) when refused."""
        topo = self.cluster.topology
        rack_id = topo.racks.ids[rack]
        rows = topo.rack_slice(rack)
        try:
            cmd = wire.decode_command(payload, rack=rack_id, expected_gpus=rows.stop - rows.start)
            reason = wire.accept_command(self.held[rack], cmd)
            if reason is not None:
                raise ProtocolError(
                    f"epoch {cmd.epoch} seq {cmd.seq} from {cmd.ctl} is not newer",
                    rack=rack_id,
                    reason=reason,
                )
        except ProtocolError as exc:
            self.counters.commands_rejected[rack] += 1
            reasons = wire.COMMAND_REJECT_REASONS
            self.rejected[
                rack, reasons.index(exc.reason if exc.reason in reasons else "malformed")
            ] += 1
            log.warning("command rejected", rack=rack_id, reason=exc.reason, error=str(exc))
            return False
        self.cluster.command(cmd.cap_w, cmd.sm_clock_max_mhz, rows)
        if cmd.safe_cap_w is not None:  # the controller's, derived to fit with every rack on them
            self._safe_w[rows] = np.clip(
                cmd.safe_cap_w, topo.gpu_min_cap_w[rows], topo.gpu_max_cap_w[rows]
            )
        self.held[rack] = wire.HeldCommand(epoch=cmd.epoch, ctl=cmd.ctl, seq=cmd.seq)
        self.expires_at[rack] = self.monotonic() + cmd.ttl_s
        self.on_safe_cap[rack] = False
        self.counters.commands_applied[rack] += 1
        return True

    def check_expiry(self, now_mono: float) -> NDArray[np.int64]:
        """Put every rack whose command expired on its safe cap; return those racks."""
        expired = np.flatnonzero((now_mono >= self.expires_at) & ~self.on_safe_cap)
        topo = self.cluster.topology
        for rack in expired:
            rows = topo.rack_slice(int(rack))
            self.cluster.command(self._safe_w[rows], self.cluster.consts.max_clock_mhz[rows], rows)
            self.on_safe_cap[rack] = True
            self.expires_at[rack] = np.inf
            self.counters.fallbacks[rack] += 1
            log.warning("command expired: safe cap applied", rack=topo.racks.ids[rack])
        return expired

    def handle_status(self, payload: bytes) -> None:
        try:
            status = wire.decode_status(payload)
        except ProtocolError:
            return
        if status.state == "offline":
            self.counters.offline_seen += 1
            log.info("controller offline; caps unchanged until their TTL", ctl=status.controller)


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

    Pass a prepared `agents` to read its counters while this runs. With `step_cluster` False the
    caller advances the cluster itself.
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
    async with asyncio.TaskGroup() as tg:
        if step_cluster:
            tg.create_task(_clock(agents, stop), name="sim-clock")
        tg.create_task(_watchdog(agents, stop), name="agent-watchdog")
        for rack in range(cluster.topology.n_racks):
            tg.create_task(_agent(agents, rack, host, port, stop), name=f"agent-{rack}")
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


async def _watchdog(agents: RackAgents, stop: asyncio.Event) -> None:
    while not stop.is_set():
        agents.check_expiry(agents.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=WATCHDOG_PERIOD_S)


async def _agent(agents: RackAgents, rack: int, host: str, port: int, stop: asyncio.Event) -> None:
    """One rack's MQTT session, reconnecting with jittered backoff until stopped."""
    rack_id = agents.cluster.topology.racks.ids[rack]
    password = None if agents.passwords is None else agents.passwords.get(rack_id)
    attempt = 0
    while not stop.is_set():
        try:
            async with aiomqtt.Client(
                host,
                port,
                username=rack_id if password is not None else None,
                password=password,
                tls_context=agents.tls_context,
                identifier=f"rheostat-agent-{agents.site}-{rack_id}",
                protocol=_PROTOCOLS[agents.protocol],
                keepalive=10,
                timeout=5.0,
            ) as client:
                attempt = 0
                agents.counters.connects[rack] += 1
                await client.subscribe(wire.command_topic(agents.site, rack_id), qos=1)
                await client.subscribe(wire.status_topic(agents.site), qos=1)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_publish(agents, rack, client, stop))
                    tg.create_task(_receive(agents, rack, client))
                    await stop.wait()
                    raise _Stopped
        except* _Stopped:
            pass
        except* (aiomqtt.MqttError, TimeoutError) as group:
            log.warning("agent disconnected", rack=rack_id, error=str(group.exceptions[0]))
        if stop.is_set():
            return
        attempt += 1
        await backoff(stop, attempt)


async def backoff(stop: asyncio.Event, attempt: int) -> None:
    """Wait before reconnect `attempt` (or until stop): jittered, capped at a few seconds, so a
    rack is back on the broker soon after it returns (`wire.reconnect_delay_s`)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=wire.reconnect_delay_s(attempt))


def _boot_id() -> str:
    return f"sim-{secrets.token_hex(6)}"


class _Stopped(Exception):
    """Raised inside an agent's task group to end it cleanly when `stop` is set."""


async def _publish(
    agents: RackAgents, rack: int, client: aiomqtt.Client, stop: asyncio.Event
) -> None:
    topic = wire.telemetry_topic(agents.site, agents.cluster.topology.racks.ids[rack])
    # Spread racks over the period so the broker sees a steady stream, not a burst.
    await asyncio.sleep(agents.period_s * rack / max(agents.cluster.topology.n_racks, 1))
    while not stop.is_set():
        payload = wire.encode_telemetry(agents.telemetry(rack))
        async with asyncio.timeout(5.0):
            await client.publish(topic, payload, qos=0)
        agents.counters.telemetry_sent[rack] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=agents.period_s)


async def _receive(agents: RackAgents, rack: int, client: aiomqtt.Client) -> None:
    status = wire.status_topic(agents.site)
    async for message in client.messages:
        payload = bytes(message.payload)
        if message.topic.matches(status):
            agents.handle_status(payload)
        else:
            agents.handle_command(rack, payload)
