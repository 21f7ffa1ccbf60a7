"""The agent's loop: telemetry out every period, commands in, the TTL watchdog, a clean stop.

Three tasks share one `NodeAgent`:
- `session`: one MQTT connection at a time, reconnecting with jittered exponential backoff capped
  at `mqtt.max_backoff_s` (<= 2 s), so an agent is back within about two seconds of its broker;
  it subscribes to its rack's and its node's command topics and publishes its telemetry;
- `watchdog`: every 50 ms, on the monotonic clock, whether the command in force ran out (it runs
  whether or not the broker is reachable: a lost broker is exactly when it matters);
- backend calls (NVML takes 10-20 ms a call) run in a worker thread, one at a time under a lock.
On stop the agent restores the limits and clocks it found at start (not with `--read-only`, which
never sets anything) and closes the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
import numpy as np
import structlog
from numpy.typing import NDArray

from agent.backend import BackendError, FloatArray, GpuBackend, GpuIdentity, GpuReading
from agent.config import AgentConfig
from agent.gate import CommandGate
from agent.node_power import NodePowerReader
from controller import wire

log = structlog.get_logger("rheostat.agent")

WATCHDOG_PERIOD_S = 0.05
#: An enforced limit this far from the commanded one, read back after `MISMATCH_AFTER_S`, is
#: logged and exported as a mismatch. Units: W, s.
MISMATCH_TOLERANCE_W = 2.0
MISMATCH_AFTER_S = 3.0
_PROTOCOLS = {"3.1.1": aiomqtt.ProtocolVersion.V311, "5": aiomqtt.ProtocolVersion.V5}

ClassSource = Callable[[], tuple[tuple[str, ...], NDArray[np.int64]]]


@dataclass(eq=False, kw_only=True)
class NodeAgent:
    """One server's agent state. `clock` is monotonic seconds (TTL, rate limits)."""

    config: AgentConfig
    backend: GpuBackend
    node_power: NodePowerReader | None = None
    classes: ClassSource | None = None
    clock: Callable[[], float] = time.monotonic
    boot: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    ident: GpuIdentity = field(init=False)
    gate: CommandGate = field(init=False)
    seq: int = 0
    cap_cmd_w: FloatArray = field(init=False)
    applied_at: float = -np.inf
    mismatch: bool = False
    apply_errors: int = 0
    connects: int = 0
    telemetry_sent: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.ident = self.backend.identity()
        n = self.ident.n_gpus
        safe = self.config.safe_cap_w
        if safe is None:
            safe_w = self.ident.min_cap_w.copy()
        else:
            values = np.asarray(safe, np.float64)
            if values.ndim == 1 and values.size != n:
                raise BackendError(f"safe_cap_w lists {values.size} values for {n} GPUs")
            safe_w = np.broadcast_to(values, (n,)).astype(np.float64)
        self.gate = CommandGate(
            configured_safe_cap_w=np.clip(safe_w, self.ident.min_cap_w, self.ident.max_cap_w)
        )
        self.cap_cmd_w = np.full(n, np.nan)

    @property
    def rack_gpus(self) -> int:
        return self.config.rack_gpus or self.config.first_gpu + self.ident.n_gpus

    # ------------------------------------------------------------------ backend, one at a time
    async def _backend(self, fn: Callable[[], object]) -> object:
        async with self._lock:
            return await asyncio.to_thread(fn)

    async def apply(self, caps: FloatArray, clocks: FloatArray, why: str) -> bool:
        if self.config.read_only:
            return False
        try:
            await self._backend(lambda: self.backend.apply(caps, clocks))
        except BackendError as exc:
            self.apply_errors += 1
            log.warning("could not apply", why=why, error=str(exc))
            return False
        self.cap_cmd_w = np.clip(caps, self.ident.min_cap_w, self.ident.max_cap_w)
        self.applied_at = self.clock()
        return True

    async def handle_command(self, topic: str, payload: bytes) -> bool:
        """Decode, gate and apply one command; False when it was rejected (and counted)."""
        cfg = self.config
        node_topic = topic == wire.node_command_topic(cfg.site, cfg.rack, cfg.node)
        try:
            cmd = wire.decode_node_command(
                payload,
                rack=cfg.rack,
                node=cfg.node,
                first=cfg.first_gpu,
                count=self.ident.n_gpus,
                rack_gpus=self.rack_gpus,
                node_topic=node_topic,
            )
        except wire.CommandRejectedError as exc:
            self.gate.reject(exc.reason)
            log.warning("command rejected", reason=exc.reason, error=str(exc))
            return False
        if not self.gate.offer(cmd, self.clock()):
            return False
        await self.apply(cmd.cap_w, cmd.sm_clock_max_mhz, "command")
        return True

    async def check_watchdog(self) -> bool:
        """Apply the safe caps if the command in force ran out; True when it did."""
        safe = self.gate.due(self.clock())
        if safe is None:
            return False
        log.warning("command TTL ran out: safe caps applied", safe_cap_w=safe.tolist())
        await self.apply(safe, self.ident.max_sm_clock_mhz, "watchdog")
        return True

    async def reading(self) -> tuple[GpuReading, float]:
        reading = await self._backend(self.backend.read)
        assert isinstance(reading, GpuReading)
        node_w = np.nan
        if self.node_power is not None:
            reader = self.node_power
            try:
                node_w = await asyncio.to_thread(reader.read)
            except BackendError as exc:
                log.warning("node power unavailable", error=str(exc))
        self._check_mismatch(reading)
        return reading, node_w

    def _check_mismatch(self, reading: GpuReading) -> None:
        if self.clock() - self.applied_at < MISMATCH_AFTER_S:
            return
        off = np.abs(reading.cap_w - self.cap_cmd_w) > MISMATCH_TOLERANCE_W  # NaN: not commanded
        if bool(off.any()) != self.mismatch:
            self.mismatch = bool(off.any())
            log.warning(
                "enforced power limit differs from the commanded one"
                if self.mismatch
                else "enforced power limit matches the commanded one again",
                gpus=np.flatnonzero(off).tolist(),
            )

    def telemetry(self, reading: GpuReading, node_power_w: float) -> wire.NodeTelemetry:
        cfg, ident = self.config, self.ident
        self.seq += 1
        if self.classes is not None:
            classes, class_idx = self.classes()
        else:
            classes, class_idx = (cfg.workload_class,), np.zeros(ident.n_gpus, np.int64)
        return wire.NodeTelemetry(
            rack=cfg.rack,
            node=cfg.node,
            hostname=_hostname(),
            seq=self.seq,
            ts_s=time.time(),
            boot=self.boot,
            gpu_index=ident.index,
            uuid=ident.uuid,
            pci_bus_id=ident.pci_bus_id,
            name=ident.name,
            power_w=reading.power_w,
            power_instant_w=reading.power_instant_w,
            energy_j=reading.energy_j,
            sm_clock_mhz=reading.sm_clock_mhz,
            util=np.clip(reading.util, 0.0, 1.0),
            mem_util=np.clip(reading.mem_util, 0.0, 1.0),
            temp_c=reading.temp_c,
            cap_w=reading.cap_w,
            cap_cmd_w=self.cap_cmd_w,
            sm_clock_max_mhz=reading.sm_clock_max_mhz,
            min_cap_w=ident.min_cap_w,
            max_cap_w=ident.max_cap_w,
            classes=classes,
            class_idx=class_idx,
            node_power_w=node_power_w,
            cmd_epoch=self.gate.cmd_epoch,
            cmd_seq=self.gate.cmd_seq,
            cmd_rejected=dict(self.gate.rejected),
            fallback=self.gate.fallback,
        )

    async def restore(self) -> None:
        if self.config.read_only:
            return
        try:
            await self._backend(self.backend.restore_defaults)
            log.info("defaults restored")
        except BackendError as exc:
            log.exception("could not restore defaults", error=str(exc))


def _hostname() -> str:
    return socket.gethostname()[: wire.MAX_HOSTNAME_CHARS] or "localhost"


def backoff_s(attempt: int, cap_s: float) -> float:
    """Jittered exponential backoff before reconnect `attempt` (1-based), at most `cap_s`."""
    return random.uniform(0.5, 1.0) * min(cap_s, 0.1 * 2.0 ** min(attempt - 1, 10))


class _Stopped(Exception):
    """Ends the session's task group when `stop` is set."""


async def run_agent(agent: NodeAgent, stop: asyncio.Event) -> None:
    """Run until `stop` is set; then restore the defaults found at start and close the backend."""
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_watchdog(agent, stop), name="agent-watchdog")
            tg.create_task(_session(agent, stop), name="agent-session")
    finally:
        await agent.restore()
        agent.backend.close()


async def _watchdog(agent: NodeAgent, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await agent.check_watchdog()
        except Exception:  # the watchdog must outlive any one failure
            log.exception("watchdog check failed")
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
            password = mq.password()
            async with aiomqtt.Client(
                mq.host,
                mq.port,
                username=mq.username or (cfg.rack if password is not None else None),
                password=password,
                tls_context=_tls(agent),
                identifier=f"rheostat-agent-{cfg.site}-{cfg.rack}-{cfg.node}",
                protocol=_PROTOCOLS[mq.protocol],
                keepalive=mq.keepalive_s,
                timeout=5.0,
            ) as client:
                attempt = 0
                agent.connects += 1
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
    topic = wire.node_telemetry_topic(cfg.site, cfg.rack, cfg.node)
    loop = asyncio.get_running_loop()
    next_s = loop.time()
    while not stop.is_set():
        try:
            reading, node_w = await agent.reading()
        except BackendError as exc:
            log.warning("reading failed", error=str(exc))
        else:
            payload = wire.encode_node_telemetry(agent.telemetry(reading, node_w))
            async with asyncio.timeout(5.0):
                await client.publish(topic, payload, qos=0)
            agent.telemetry_sent += 1
        next_s = max(next_s + cfg.period_s, loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=next_s - loop.time())


async def _receive(agent: NodeAgent, client: aiomqtt.Client) -> None:
    async for message in client.messages:
        try:
            await agent.handle_command(str(message.topic), bytes(message.payload))
        except Exception:  # one bad message never stops the agent
            log.exception("command handling failed")
