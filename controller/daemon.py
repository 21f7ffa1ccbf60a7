"""The controller daemon: MQTT ingest, the control tick, expiring commands, reloads, shutdown.

Three loops run as named tasks in one `asyncio.TaskGroup`:
- `mqtt`: connects (jittered backoff on failure, at most `wire.RECONNECT_MAX_S`, well inside any
  command TTL), subscribes, publishes the retained `online` status, republishes current commands
  after a reconnect, and feeds telemetry to `Ingest` through a conflating queue, draining it in
  batches so a burst costs one wake-up, not one per message. An exception while handling one
  message is logged and counted (`MessageRejections`), and the next message is handled.
- `tick` (`controller.tick_loop`): every period, snapshot → `policies.pipeline.decide` (in a
  worker thread, so a slow decision never blocks ingest) → commands for the racks that are due.
  Ticks never overlap; a late one is counted and logged. The loop keeps deciding during a broker
  outage.
- `commands`: the bulk lane of `controller.publisher`, sending each tick's non-urgent commands
  in acknowledged windows; urgent ones (a limit exceeded until they land) leave from the tick.
- `protect`: between ticks, racks that draw over their caps in force are sent them again at
  once (`controller.protect`), without waiting for a tick or a decision.
On stop (SIGTERM) the daemon publishes the retained `offline` status itself (a clean disconnect
does not fire the last will) and leaves: racks keep their caps until the TTL runs out, then apply
their safe caps. A fault that ends the loops does the same on its way out, and the process exits
non-zero (systemd restarts it); a killed process leaves `offline` through its last will.

Clocks: `clock` (Unix s) stamps what carries wall time (grid events, status, `issued_at`);
`monotonic` orders everything else (telemetry freshness, command refresh, the decision's rates),
so a step of the wall clock neither stops commands nor makes racks stale. Commands are ordered
for agents by (epoch, controller instance id, seq), with `seq` counting from 1 per instance.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import structlog

from controller.broker import BrokerSession
from controller.features import build_hooks, subscription_table
from controller.ha.runner import HaRunner
from controller.mqtt_client import Client
from controller.nodes import NodeAssembler
from controller.policy_file import Policy
from controller.protect import ProtectiveCuts
from controller.publisher import CommandPublisher, SendTrace
from controller.reload import PolicyReload, build_runtime, policy_classes, tier_table
from controller.settings import mqtt_password
from controller.shard.pool import IngestPool
from controller.stages import build_stages
from controller.tick_loop import Decider, Notifier, TickLoop
from controller.watch import watch_file
from controller.wire import MessageRejections
from policies.pipeline import decide

#: The interpreter's thread switch interval while the daemon runs (default 5 ms); see `run`.
#: Measured with `rheostat bench e2e --racks 10000`: see docs/latency.md. Units: s.
SWITCH_INTERVAL_S = 0.0005

log = structlog.get_logger("rheostat.controller")
#: Re-exported: what the daemon is given from outside, and the state it starts from.
__all__ = ["Controller", "Decider", "Notifier", "build_runtime", "instance_id"]


def instance_id() -> str:
    """A new controller instance id (`ctl` on commands): unique per process start."""
    return f"c{os.getpid()}-{secrets.token_hex(6)}"


class _NoNotifier:
    def notify(self, state: str) -> None:
        del state


class Controller(BrokerSession, PolicyReload, TickLoop):
    """The daemon: `await controller.run(stop)` runs until `stop` is set, then shuts down."""

    def __init__(
        self,
        policy: Policy,
        *,
        policy_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
        version: str = "0+unknown",
        decider: Decider = decide,
        trace: SendTrace | None = None,
    ) -> None:
        self.policy_path = policy_path
        self.decider = decider
        self.clock = clock
        self.monotonic = monotonic
        #: This process's controller instance id; commands carry it as `ctl`.
        self.instance = instance_id()
        #: Refused messages beside telemetry, and any whose handling raised, by kind and reason.
        self.rejections = MessageRejections()
        self.notifier: Notifier = notifier or _NoNotifier()
        self.runtime = build_runtime(policy, clock=clock, version=version, monotonic=monotonic)
        self.runtime.reloads.last_success_s = clock()
        self._client: Client | None = None
        self._send_lock = asyncio.Lock()
        self.publisher = CommandPublisher(
            self.runtime,
            self._send_lock,
            clock=monotonic,
            wall_clock=clock,
            may_send=lambda: self.ha.is_leader(),  # noqa: PLW0108 - self.ha is built below
            trace=trace,
        )
        #: Racks over their caps in force are sent them again between ticks.
        self.protect = ProtectiveCuts(
            self.runtime, self.publisher, clock=monotonic, label=self._label_book
        )
        self._state_lock = asyncio.Lock()
        self._metrics_serving = False
        self._ready_sent = False
        self._stopping = False
        #: The features the policy enables (`controller.features`); None where one is off.
        self.hooks = build_hooks(
            policy, policy_path=policy_path, clock=clock, rejections=self.rejections
        )
        self.grid, self.facility = self.hooks.grid, self.hooks.facility
        self.carbon = self.hooks.carbon
        #: The scheduler's synchronous jobs, paced by the decision; always listened for.
        self.jobs = self.hooks.jobs
        #: Node agents' telemetry assembled into racks, when the policy has a node inventory.
        self.nodes = (
            None
            if policy.inventory is None
            else NodeAssembler(
                site=policy.site,
                topology=policy.topology,
                inventory=policy.inventory,
                forward=self._to_ingest,
            )
        )
        #: Telemetry ingest in worker processes (`ingest.workers`); None: in this process.
        self.pool = self._ingest_pool(policy)
        #: Leadership: only the leader publishes (commands, status, grid reports).
        self.ha = HaRunner(
            policy.config.ha,
            site=policy.site,
            name=policy.config.mqtt.client_id,
            instance=self.instance,
            on_gain=self._took_lead,
        )
        #: What the broker session subscribes to and who handles each message.
        self.subscriptions = subscription_table(
            self.hooks,
            site=policy.site,
            clock=clock,
            nodes=self.nodes,
            telemetry=self._to_ingest,
            telemetry_here=self.pool is None,
        )
        #: The tick's features in the order they run (`controller.stages.build_stages`).
        self.stages = build_stages(self.hooks)
        self._label_book()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def _label_book(self) -> None:
        book = self.runtime.book
        book.ctl, book.epoch = self.instance, self.epoch

    def _to_ingest(self, topic: str, payload: bytes) -> bool:
        return self.runtime.ingest.handle(topic, payload)  # the ingest in force (reloads swap it)

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Self:
        """Start the daemon's loops in the background (connect, subscribe, tick, publish)."""
        if self._task is not None:
            raise RuntimeError("the controller is already running")
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.run(self._stop), name="controller")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop: the retained `offline` status is published, leadership and ingest workers are
        released; a fault that ended the loops early is raised here."""
        stop, task = self._stop, self._task
        self._stop = self._task = None
        if stop is None or task is None:
            return
        stop.set()
        await task

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        # Everything built so far (modules, policy, topology) lives as long as the process: out of
        # the collector's way, a full collection no longer walks it and stalls the loop for tens
        # of ms, which would land on the telemetry-to-command latency.
        gc.collect()
        gc.freeze()
        # The decision runs in a worker thread beside the event loop. Each of its numpy calls
        # releases the interpreter lock and must win it back; at the default 5 ms switch interval
        # a loop busy with a command burst holds it that long each time, so a 50 ms decision over
        # 320k GPUs stretched to 200-300 ms during bursts. A shorter interval hands it back sooner.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            await self._run(stop)
        finally:
            await self.ha.close()  # a standby takes over now, not at the lease's expiry
            if self.pool is not None:
                self.pool.close()

    async def _run(self, stop: asyncio.Event) -> None:
        if self.pool is not None:
            self.pool.start()
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._mqtt_loop(), name="mqtt"),
                group.create_task(self._tick_loop(), name="tick"),
                group.create_task(self.ha.serve(), name="ha"),
                group.create_task(self.publisher.run(), name="commands"),
                group.create_task(self.protect.run(), name="protect"),
            ]
            if self.grid is not None:
                tasks.append(group.create_task(self.grid.serve(), name="grid"))
            if self.pool is not None:
                tasks.append(group.create_task(self.pool.watch(), name="ingest-pool"))
            if self.policy_path is not None:
                watched = watch_file(
                    self.policy_path,
                    lambda: self.runtime.policy.config.control.watch_policy_s,
                    self.reload,
                )
                tasks.append(group.create_task(watched, name="policy-watch"))
            await stop.wait()
            self._stopping = True
            self.notifier.notify("STOPPING=1")
            for task in (*tasks, *self.publisher.confirming):
                task.cancel()
        log.info("stopped", ticks=self.runtime.ticks.ticks)

    def _ingest_pool(self, policy: Policy) -> IngestPool | None:
        """Shared-memory fleet arrays and their worker processes, when the policy asks.

        The policy's class names get codes first, in the order every worker is given them.
        """
        if policy.config.ingest.workers == 0:
            return None
        rt = self.runtime
        for name in policy_classes(policy):
            rt.classes.code(name)
        pool = IngestPool(
            policy,
            initial=rt.fleet,
            classes=rt.classes.names[1:],
            password=mqtt_password(policy.config.mqtt),
        )
        rt.fleet = rt.ingest.fleet = pool.fleet
        rt.ingest.cmd_rejected = pool.shared.cmd_rejected
        rt.tier_table = tier_table(policy, rt.classes)
        return pool

    def metrics_serving(self) -> None:
        """Tell the daemon its metrics endpoint is up; READY=1 waits for it and the subscription."""
        self._metrics_serving = True
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self._metrics_serving and self.runtime.subscribed and not self._ready_sent:
            self._ready_sent = True
            self.notifier.notify("READY=1")
            log.info("ready")

    async def _send_due(
        self, *, tick_started_s: float | None = None, decided_s: float | None = None
    ) -> tuple[int, int]:
        """Send the urgent commands now and plan the rest; see `controller.publisher`.

        Returns (urgent commands sent, other racks due). Skipped while disconnected.
        """
        if not self.ha.is_leader():
            return 0, 0
        self._label_book()  # fencing: the term's epoch on every command
        return await self.publisher.send_due(tick_started_s=tick_started_s, decided_s=decided_s)
