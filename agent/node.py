"""One node agent's state and rules: commands in through the gate, caps out through the backend.

`NodeAgent` holds what one agent knows (the command in force, its sequence, the readings) and
does each step of the agent's work once: accept or refuse a command (`agent.gate`), apply caps
and clock ceilings through the backend (NVML takes 10-20 ms a call, so backend calls run in a
worker thread, one at a time under a lock, unless `offload` is off), check the TTL watchdog,
read the GPUs and build telemetry per node or per rack, restore the defaults on stop. The loops
that drive it over MQTT are in `agent.run`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog
from numpy.typing import NDArray

from agent.backend import BackendError, FloatArray, GpuBackend, GpuIdentity, GpuReading
from agent.config import AgentConfig
from agent.gate import CommandGate
from agent.node_power import NodePowerReader
from controller import wire
from policies.errors import ProtocolError

log = structlog.get_logger("rheostat.agent")

#: An enforced limit this far from the commanded one, read back after `MISMATCH_AFTER_S`, is
#: logged and exported as a mismatch. Units: W, s.
MISMATCH_TOLERANCE_W = 2.0
MISMATCH_AFTER_S = 3.0
ClassSource = Callable[[], tuple[tuple[str, ...], NDArray[np.int64]]]


@dataclass(eq=False, kw_only=True)
class NodeAgent:
    """One server's agent state. `clock` is monotonic seconds (TTL, rate limits); `wall_clock`
    only stamps telemetry. `mqtt_password` and `tls_context`, when set, replace the config's
    password source and TLS files (a process embedding many agents passes them directly).
    Counters count since start (`connects`, `telemetry_sent`, `offline_seen`) or, for the gate's
    `accepted`, `fallbacks` and `rejected`, since the last `restart`.
    """

    config: AgentConfig
    backend: GpuBackend
    node_power: NodePowerReader | None = None
    classes: ClassSource | None = None
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    #: Run backend calls in a worker thread (NVML blocks); False keeps them on the loop's thread.
    offload: bool = True
    mqtt_password: str | None = None
    tls_context: ssl.SSLContext | None = None
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
    offline_seen: int = 0
    #: Delay before the first telemetry (many agents in one process spread over the period). s.
    start_offset_s: float = 0.0
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
        if self.config.telemetry == "rack" and self.rack_gpus != n:
            raise BackendError(f"rack telemetry needs the whole rack: {n} of {self.rack_gpus} GPUs")

    @property
    def rack_gpus(self) -> int:
        return self.config.rack_gpus or self.config.first_gpu + self.ident.n_gpus

    def restart(self) -> None:
        """Forget what a process restart forgets: a new boot id, telemetry from seq 1, no command
        held, counts from zero. Caps already applied stay (the GPUs keep them)."""
        self.boot = uuid.uuid4().hex[:16]
        self.seq = 0
        self.gate = CommandGate(configured_safe_cap_w=self.gate.configured_safe_cap_w)

    # ------------------------------------------------------------------ backend, one at a time
    async def _backend(self, fn: Callable[[], object]) -> object:
        if not self.offload:
            return fn()
        async with self._lock:
            return await asyncio.to_thread(fn)

    def apply_now(self, caps: FloatArray, clocks: FloatArray, why: str) -> bool:
        """Set caps and clock ceilings on this thread (`apply` is the loop's way)."""
        if self.config.read_only:
            return False
        try:
            self.backend.apply(caps, clocks)
        except BackendError as exc:
            self.apply_errors += 1
            log.warning("could not apply", why=why, error=str(exc))
            return False
        self.cap_cmd_w = np.clip(caps, self.ident.min_cap_w, self.ident.max_cap_w)
        self.applied_at = self.clock()
        return True

    async def apply(self, caps: FloatArray, clocks: FloatArray, why: str) -> bool:
        if self.config.read_only:
            return False
        applied = await self._backend(lambda: self.apply_now(caps, clocks, why))
        return bool(applied)

    def accept(self, topic: str, payload: bytes) -> wire.NodeCommand | None:
        """Decode and gate one command: the command to apply, or None (rejected and counted)."""
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
            log.warning("command rejected", rack=cfg.rack, reason=exc.reason, error=str(exc))
            return None
        if not self.gate.offer(cmd, self.clock()):
            return None
        return cmd

    async def handle_command(self, topic: str, payload: bytes) -> bool:
        """Decode, gate and apply one command; False when it was rejected (and counted)."""
        cmd = self.accept(topic, payload)
        if cmd is None:
            return False
        await self.apply(cmd.cap_w, cmd.sm_clock_max_mhz, "command")
        return True

    def handle_command_now(self, topic: str, payload: bytes) -> bool:
        """`handle_command` on this thread."""
        cmd = self.accept(topic, payload)
        if cmd is None:
            return False
        self.apply_now(cmd.cap_w, cmd.sm_clock_max_mhz, "command")
        return True

    def _due(self, now: float | None) -> FloatArray | None:
        safe = self.gate.due(self.clock() if now is None else now)
        if safe is not None:
            log.warning("command TTL ran out: safe caps applied", rack=self.config.rack)
        return safe

    async def check_watchdog(self) -> bool:
        """Apply the safe caps if the command in force ran out; True when it did."""
        safe = self._due(None)
        if safe is None:
            return False
        await self.apply(safe, self.ident.max_sm_clock_mhz, "watchdog")
        return True

    def check_watchdog_now(self, now: float | None = None) -> bool:
        """`check_watchdog` on this thread, at monotonic time `now` (the agent's clock if None)."""
        safe = self._due(now)
        if safe is None:
            return False
        self.apply_now(safe, self.ident.max_sm_clock_mhz, "watchdog")
        return True

    def handle_status(self, payload: bytes) -> None:
        """The controller's status: `offline` is logged and counted, nothing more (the caps hold
        until their TTL, so a controller restart or a standby taking over costs nothing)."""
        try:
            status = wire.decode_status(payload)
        except ProtocolError:
            return
        if status.state == "offline":
            self.offline_seen += 1
            log.info("controller offline; caps unchanged until their TTL", ctl=status.controller)

    def reading_now(self) -> tuple[GpuReading, float]:
        """One reading of the GPUs and the node's meter (NaN without one), on this thread."""
        reading = self.backend.read()
        node_w = np.nan
        if self.node_power is not None:
            try:
                node_w = self.node_power.read()
            except BackendError as exc:
                log.warning("node power unavailable", error=str(exc))
        self._check_mismatch(reading)
        return reading, node_w

    async def reading(self) -> tuple[GpuReading, float]:
        if not self.offload:
            return self.reading_now()
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

    def workload_classes(self) -> tuple[tuple[str, ...], NDArray[np.int64]]:
        """Each GPU's workload class: from the job mapping, else the configured one for all."""
        if self.classes is not None:
            return self.classes()
        return (self.config.workload_class,), np.zeros(self.ident.n_gpus, np.int64)

    def telemetry(self, reading: GpuReading, node_power_w: float) -> wire.NodeTelemetry:
        cfg, ident = self.config, self.ident
        self.seq += 1
        classes, class_idx = self.workload_classes()
        return wire.NodeTelemetry(
            rack=cfg.rack,
            node=cfg.node,
            hostname=_hostname(),
            seq=self.seq,
            ts_s=self.wall_clock(),
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

    def rack_telemetry(self, reading: GpuReading, rack_power_w: float) -> wire.Telemetry:
        """This agent's rack as one rack-level message (config `telemetry: rack`: the agent holds
        every GPU of its rack). `rack_power_w` is the rack's meter; NaN: the GPUs' sum. W."""
        self.seq += 1
        classes, class_idx = self.workload_classes()
        gate = self.gate
        held = gate.last is not None
        return wire.Telemetry(
            rack=self.config.rack,
            seq=self.seq,
            ts_s=self.wall_clock(),
            power_w=reading.power_w,
            sm_clock_mhz=reading.sm_clock_mhz,
            util=np.clip(reading.util, 0.0, 1.0),
            mem_util=np.clip(reading.mem_util, 0.0, 1.0),
            temp_c=reading.temp_c,
            cap_w=reading.cap_w,
            classes=classes,
            class_idx=class_idx,
            rack_power_w=float(
                np.nansum(reading.power_w) if np.isnan(rack_power_w) else rack_power_w
            ),
            boot=self.boot,
            cmd_epoch=gate.cmd_epoch if held else None,
            cmd_seq=gate.cmd_seq if held else None,
            cmd_rejected={k: n for k, n in gate.rejected.items() if n},
            fallback=gate.fallback,
        )

    def encode_telemetry(self, reading: GpuReading, node_power_w: float) -> tuple[str, bytes]:
        """The topic and payload of this period's telemetry, in the configured form."""
        cfg = self.config
        if cfg.telemetry == "rack":
            return wire.telemetry_topic(cfg.site, cfg.rack), wire.encode_telemetry(
                self.rack_telemetry(reading, node_power_w)
            )
        return wire.node_telemetry_topic(cfg.site, cfg.rack, cfg.node), wire.encode_node_telemetry(
            self.telemetry(reading, node_power_w)
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
