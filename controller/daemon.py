"""The controller daemon: MQTT ingest, the control tick, expiring commands, reloads, shutdown.

Three loops run as named tasks in one `asyncio.TaskGroup`:
- `mqtt`: connects (jittered backoff on failure, at most `wire.RECONNECT_MAX_S`, well inside any
  command TTL), subscribes, publishes the retained `online` status, republishes current commands
  after a reconnect, and feeds telemetry to `Ingest` through a conflating queue, draining it in
  batches so a burst costs one wake-up, not one per message. An exception while handling one
  message is logged and counted (`MessageRejections`), and the next message is handled.
- `tick`: every period, snapshot → `policies.pipeline.decide` (in a worker thread, so a slow
  decision never blocks ingest) → commands for the racks that are due. Ticks never overlap; a
  late one is counted and logged. The loop keeps deciding during a broker outage.
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
import contextlib
import dataclasses
import gc
import math
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
import numpy as np
import structlog

from controller import wire
from controller.carbon import CarbonHook
from controller.command_book import CommandBook
from controller.facility import FacilityHook
from controller.grid.hook import GridHook
from controller.ha.runner import HaRunner
from controller.ingest import ClassTable, ConflatingQueue, Ingest
from controller.jobs import SyncJobs
from controller.mqtt_client import Client, topic_payload
from controller.nodes import NodeAssembler
from controller.policy_file import Policy, check_reload, load_policy
from controller.protect import ProtectiveCuts
from controller.publisher import CommandPublisher, SendTrace
from controller.runtime import DemandResponseStatus, Runtime
from controller.settings import mqtt_password
from controller.shard.pool import IngestPool
from controller.watch import watch_file
from controller.wire import MessageRejections
from policies.decision import Decision, DecisionState, Limits, PolicySettings
from policies.errors import RheostatError
from policies.fleet import FleetState
from policies.pipeline import decide
from policies.topology import Topology

log = structlog.get_logger("rheostat.controller")

#: Messages handled per batch before yielding to the loop, so ticks and scrapes stay on time.
DRAIN_BATCH = 2048


def instance_id() -> str:
    """A new controller instance id (`ctl` on commands): unique per process start."""
    return f"c{os.getpid()}-{secrets.token_hex(6)}"


class Notifier(Protocol):
    """systemd's notify socket (`sdnotify.SystemdNotifier`), or anything that accepts its lines."""

    def notify(self, state: str) -> Any: ...


class Decider(Protocol):
    """`policies.pipeline.decide`'s signature; the daemon takes it as a parameter."""

    def __call__(
        self,
        topology: Topology,
        fleet: FleetState,
        *,
        tier: np.ndarray[Any, np.dtype[np.int8]],
        limits: Limits,
        settings: PolicySettings,
        state: DecisionState | None,
        now_s: float,
        stale_rack: np.ndarray[Any, np.dtype[np.bool_]] | None = None,
        sync_job: np.ndarray[Any, np.dtype[np.int32]] | None = None,
    ) -> tuple[Decision, DecisionState]: ...


class _NoNotifier:
    def notify(self, state: str) -> None:
        del state


def _tier_table(policy: Policy, classes: ClassTable) -> np.ndarray[Any, np.dtype[np.int8]]:
    tiers = policy.config.tiers
    return classes.tier_table(tiers.classes, tiers.default)


def build_runtime(
    policy: Policy,
    *,
    clock: Callable[[], float],
    version: str,
    monotonic: Callable[[], float] | None = None,
) -> Runtime:
    """Fresh state for `policy`. `monotonic` (default: `clock`) times freshness and refreshes."""
    topology = policy.topology
    control = policy.config.control
    bounds = policy.config.telemetry
    fleet = FleetState.empty(topology)
    classes = ClassTable(max_classes=bounds.max_classes)
    return Runtime(
        policy=policy,
        fleet=fleet,
        classes=classes,
        ingest=Ingest(
            topology,
            fleet,
            classes,
            restart_gap_s=control.restart_gap_s,
            clock=monotonic or clock,
            wall_clock=clock,
            max_clock_skew_s=bounds.max_clock_skew_s,
            stale_after_s=control.stale_after_s,
        ),
        book=CommandBook(
            topology,
            ttl_s=control.command_ttl_s,
            refresh_frac=control.refresh_frac,
            deadband_w=policy.config.capping.deadband_w,
            safe_cap_w=policy.safe_cap_w,
        ),
        tier_table=_tier_table(policy, classes),
        limits=Limits(),
        version=version,
    )


def _grid_hook(
    policy: Policy, policy_path: Path | None, clock: Callable[[], float]
) -> GridHook | None:
    """Demand response when the policy has an enabled `demand_response` section.

    Built once per daemon: the section's changes take effect at the next restart.
    """
    section = policy.config.demand_response
    if section is None or not section.enabled:
        return None
    return GridHook(
        section,
        site=policy.site,
        clock=clock,
        base_dir=None if policy_path is None else policy_path.parent,
        tick_s=policy.config.control.tick_period_s,
        psu_efficiency=policy.config.limits.psu_efficiency,
    )


def _routed(grid: GridHook, ingest: Callable[[str, bytes], bool]) -> Callable[[str, bytes], bool]:
    """Grid-event messages go to the grid hook, everything else to ingest."""

    def handle(topic: str, payload: bytes) -> bool:
        return grid.handle(topic, payload) or ingest(topic, payload)

    return handle


class Controller:
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
        self.grid = _grid_hook(policy, policy_path, clock)
        section = policy.config.facility
        self.facility = (
            None
            if section is None
            else FacilityHook(
                section=section,
                site=policy.site,
                base_dir=policy_path.parent if policy_path is not None else None,
                psu_efficiency=policy.config.limits.psu_efficiency,
            )
        )
        carbon = policy.config.carbon
        self.carbon = (
            CarbonHook(
                section=carbon,
                site=policy.site,
                topology=policy.topology,
                base_dir=policy_path.parent if policy_path is not None else None,
            )
            if carbon is not None and carbon.enabled
            else None
        )
        #: The scheduler's synchronous jobs, paced by the decision; always listened for.
        self.jobs = SyncJobs(
            site=policy.site,
            topology=policy.topology,
            max_jobs=policy.config.telemetry.max_jobs,
            rejections=self.rejections,
        )
        if self.grid is not None:
            self.grid.topic.rejections = self.rejections
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
        self._label_book()
        if (
            self.grid is not None
            and self.carbon is not None
            and self.carbon.section.signal == "price"
        ):
            self.grid.price_sink = self.carbon.take_forecast

    @property
    def epoch(self) -> int:
        """The leader's term that commands and the status carry; 0 without `ha`."""
        return self.ha.epoch()

    def _label_book(self) -> None:
        book = self.runtime.book
        book.ctl, book.epoch = self.instance, self.epoch

    def _to_ingest(self, topic: str, payload: bytes) -> bool:
        return self.runtime.ingest.handle(topic, payload)  # the ingest in force (reloads swap it)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        # Everything built so far (modules, policy, topology) lives as long as the process: out of
        # the collector's way, a full collection no longer walks it and stalls the loop for tens
        # of ms, which would land on the telemetry-to-command latency.
        gc.collect()
        gc.freeze()
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
        for name in sorted(policy.config.tiers.classes):
            rt.classes.code(name)
        pool = IngestPool(
            policy,
            initial=rt.fleet,
            classes=rt.classes.names[1:],
            password=mqtt_password(policy.config.mqtt),
        )
        rt.fleet = rt.ingest.fleet = pool.fleet
        rt.ingest.cmd_rejected = pool.shared.cmd_rejected
        rt.tier_table = _tier_table(policy, rt.classes)
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

    # ------------------------------------------------------------------ reload
    async def reload(self, path: Path | None = None) -> bool:
        """Load the policy file again; on any error the running policy stays in force."""
        path = path or self.policy_path
        reloads = self.runtime.reloads
        if path is None:
            log.warning("reload ignored: the policy did not come from a file")
            return False
        try:
            policy = await asyncio.to_thread(load_policy, path)
            async with self._state_lock:
                self._swap_policy(policy)
        except RheostatError as exc:
            reloads.failures += 1
            reloads.last_successful = False
            log.warning("policy reload failed; the previous policy stays in force", error=str(exc))
            return False
        reloads.successes += 1
        reloads.last_successful = True
        reloads.last_success_s = self.clock()
        log.info("policy reloaded", file=str(path))
        return True

    def _swap_policy(self, policy: Policy) -> None:
        rt = self.runtime
        old = rt.policy
        check_reload(old, policy)  # the rules `rheostat check --running` applies
        same_fleet = policy.topology.racks.ids == old.topology.racks.ids and np.array_equal(
            policy.topology.gpu_model, old.topology.gpu_model
        )
        if self.carbon is not None:
            self.carbon.set_topology(policy.topology)
        self.jobs.set_topology(policy.topology)
        if self.nodes is not None and policy.inventory is not None:
            self.nodes.set_policy(policy.topology, policy.inventory)
        if same_fleet:
            control = policy.config.control
            rt.policy = policy
            rt.ingest.topology = policy.topology
            rt.ingest.restart_gap_s = control.restart_gap_s
            rt.ingest.stale_after_s = control.stale_after_s
            rt.ingest.max_clock_skew_s = policy.config.telemetry.max_clock_skew_s
            rt.classes.max_classes = max(
                rt.classes.max_classes, policy.config.telemetry.max_classes
            )
            rt.book.topology = policy.topology
            rt.book.configure(
                ttl_s=control.command_ttl_s,
                refresh_frac=control.refresh_frac,
                deadband_w=policy.config.capping.deadband_w,
                safe_cap_w=policy.safe_cap_w,
            )
            if self.pool is not None:
                for name in sorted(policy.config.tiers.classes):
                    rt.classes.code(name)
                self.pool.reconfigure(policy, rt.classes.names[1:])
            rt.tier_table = _tier_table(policy, rt.classes)
            return
        # A different fleet: start from empty state; every rack is stale until it reports.
        fresh = build_runtime(
            policy, clock=self.clock, version=rt.version, monotonic=self.monotonic
        )
        for name in ("fleet", "classes", "ingest", "book", "tier_table"):
            setattr(rt, name, getattr(fresh, name))
        self._label_book()
        rt.policy, rt.decision, rt.decision_state = policy, None, None

    # ------------------------------------------------------------------ MQTT
    def _make_client(self) -> Client:
        rt = self.runtime
        mq = rt.policy.config.mqtt
        site = rt.policy.site
        offline = wire.encode_status(
            wire.Status(
                state="offline", ts_s=self.clock(), controller=self.instance, epoch=self.epoch
            )
        )
        tls = None
        if mq.tls is not None:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(mq.tls.ca_file) if mq.tls.ca_file else None,
                certfile=str(mq.tls.cert_file) if mq.tls.cert_file else None,
                keyfile=str(mq.tls.key_file) if mq.tls.key_file else None,
            )
        protocol = (
            aiomqtt.ProtocolVersion.V5 if mq.protocol == "5" else aiomqtt.ProtocolVersion.V311
        )
        return Client(
            mq.host,
            mq.port,
            identifier=mq.client_id,
            username=mq.username,
            password=mqtt_password(mq),
            protocol=protocol,
            # With `ha`, several processes share the site's status: no will (see README).
            will=None
            if self.ha.enabled
            else aiomqtt.Will(wire.status_topic(site), offline, qos=1, retain=True),
            keepalive=mq.keepalive_s,
            timeout=mq.timeout_s,
            queue_type=ConflatingQueue,
            # The daemon bounds what is in flight itself (controller.publisher); paho's own bound
            # scans every unacknowledged message on each acknowledgement.
            max_inflight_messages=0,
            tls_params=tls,
            tls_insecure=mq.tls.insecure if mq.tls is not None else None,
        )

    async def _publish_status(self, client: Client, state: str) -> None:
        if not self.ha.is_leader():
            return  # only the leader writes the site's retained status
        payload = wire.encode_status(
            wire.Status(
                state="online" if state == "online" else "offline",
                ts_s=self.clock(),
                controller=self.instance,
                epoch=self.epoch,
            )
        )
        await client.publish(
            wire.status_topic(self.runtime.policy.site), payload, qos=1, retain=True
        )

    async def _mqtt_loop(self) -> None:
        rt = self.runtime
        attempt = 0
        connected_before = False
        while True:
            try:
                async with self._make_client() as client:
                    try:
                        await self._session(client, first=not connected_before)
                    except aiomqtt.MqttError:
                        raise
                    except BaseException:
                        # Stopped, or a fault is ending the daemon: a clean disconnect fires no
                        # last will, so say `offline` before leaving.
                        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                            async with asyncio.timeout(rt.policy.config.mqtt.timeout_s):
                                await self._publish_status(client, "offline")
                        raise
                    finally:
                        connected_before = connected_before or rt.mqtt_connected
                        if rt.mqtt_connected:
                            attempt = 0
            except aiomqtt.MqttError as exc:
                mq = rt.policy.config.mqtt
                log.warning(
                    "broker connection lost"
                    if connected_before
                    else "cannot connect to the broker",
                    broker=f"{mq.host}:{mq.port}",
                    error=str(exc),
                    attempt=attempt + 1,
                )
            finally:
                self._client = None
                rt.mqtt_connected = rt.subscribed = False
                # The broker may have lost those commands: the reconnect resends every rack's.
                self.publisher.disconnected()
            attempt += 1
            await asyncio.sleep(wire.reconnect_delay_s(attempt))

    async def _session(self, client: Client, *, first: bool) -> None:
        """One broker connection: subscribe, say `online`, resend every command, then receive."""
        rt = self.runtime
        mq = rt.policy.config.mqtt
        if self.pool is None:  # else the ingest workers take telemetry
            await client.subscribe(wire.telemetry_filter(rt.policy.site), qos=0)
        if self.nodes is not None:
            await client.subscribe(wire.node_telemetry_filter(rt.policy.site), qos=0)
        for topic in self.grid.topics if self.grid is not None else ():
            await client.subscribe(topic, qos=1)
        for topic in self.facility.topics if self.facility is not None else ():
            await client.subscribe(topic, qos=0)
        for topic in self.carbon.topics if self.carbon is not None else ():
            await client.subscribe(topic, qos=1)
        if self.carbon is None:  # the carbon hook subscribes to the jobs already
            for topic in self.jobs.topics:
                await client.subscribe(topic, qos=1)
        await self._publish_status(client, "online")
        queue = client.inbox
        rt.queue = queue if isinstance(queue, ConflatingQueue) else None
        self._client = client
        self.publisher.connected(client)
        rt.mqtt_connected = rt.subscribed = True
        if not first:
            rt.mqtt_reconnects += 1
        log.info("connected", broker=f"{mq.host}:{mq.port}", protocol=mq.protocol)
        self._maybe_ready()
        async with self._send_lock:
            rt.book.invalidate(self.monotonic())
        await self._send_due()  # republish current commands at once
        await self._receive(client)

    def _guarded(self, handle: Callable[[str, bytes], bool]) -> Callable[[str, bytes], bool]:
        """`handle` that never raises: one message's fault is logged, counted and dropped."""
        rejections = self.rejections
        site_prefix = f"{wire.TOPIC_ROOT}/{self.runtime.policy.site}/"

        def guarded(topic: str, payload: bytes) -> bool:
            try:
                return handle(topic, payload)
            except Exception:  # the loop must go on whatever one message does
                kind = MessageRejections.kind_of(topic, site_prefix)
                rejections.counts[kind, "internal_error"] = (
                    rejections.counts.get((kind, "internal_error"), 0) + 1
                )
                log.exception("message could not be handled; dropped", topic=topic[:200])
                return False

        return guarded

    async def _receive(self, client: Client) -> None:
        handle: Callable[[str, bytes], bool] = self.runtime.ingest.handle
        if self.nodes is not None:
            handle = self.nodes.routed(handle)
        if self.grid is not None:
            handle = _routed(self.grid, handle)
        if self.facility is not None:
            handle = self.facility.routed(handle, clock=self.clock)
        if self.carbon is not None:
            handle = self.carbon.routed(handle, clock=self.clock)
        handle = self._guarded(self.jobs.routed(handle, forward=self.carbon is not None))
        queue = client.inbox
        while True:
            handle(*topic_payload(await client.receive()))
            # Drain what arrived in the same read without one await per message.
            for _ in range(min(queue.qsize(), DRAIN_BATCH)):
                handle(*topic_payload(queue.get_nowait()))

    # ------------------------------------------------------------------ leadership
    def _took_lead(self) -> None:
        """A new term: every rack is due under the new epoch; status and commands go at once.

        The standby decided on every tick, so the last decision is current: sending it now
        rather than at the next tick shortens the failover by up to a tick.
        """
        self.runtime.book.adopt(self.runtime.fleet.cap_w)
        client = self._client
        if client is None or self._stopping:
            return
        task = asyncio.create_task(self._announce(client), name="took-lead")
        self.publisher.confirming.add(task)
        task.add_done_callback(self.publisher.confirming.discard)

    async def _announce(self, client: Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(self.runtime.policy.config.mqtt.timeout_s):
                await self._publish_status(client, "online")
        await self._send_due()

    # ------------------------------------------------------------------ tick
    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_s = loop.time()
        while True:
            period_s = self.runtime.policy.config.control.tick_period_s
            delay_s = next_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            elif -delay_s > 0.1 * period_s:
                self.runtime.ticks.overruns += 1
                log.warning("tick late", late_s=round(-delay_s, 4))
            started = loop.time()
            try:
                async with self._state_lock:
                    await self._tick()
            except RheostatError as exc:
                log.exception("tick failed; previous commands stay in force", error=str(exc))
            self.runtime.ticks.observe(loop.time() - started)
            next_s = max(next_s + period_s, loop.time() - period_s)

    async def _tick(self) -> None:
        rt = self.runtime
        policy = rt.policy
        topo = policy.topology
        now_s = self.clock()
        started_s = time.monotonic()
        if self.nodes is not None and (reported := self.nodes.reported_topology()) is not None:
            self._swap_policy(dataclasses.replace(policy, topology=reported))  # agents' ranges
            policy, topo = rt.policy, rt.policy.topology
        mono_s = self.monotonic()
        if self.pool is not None:
            rt.ingest.counters, _ = self.pool.counters()
        if rt.tier_table.size < len(rt.classes.names):
            rt.tier_table = _tier_table(policy, rt.classes)
        snapshot = rt.fleet.copy()
        tier = rt.tier_table[snapshot.workload_class]
        stale = snapshot.stale_racks(mono_s, policy.config.control.stale_after_s)
        site_power_w = float(snapshot.rack_power_w.sum())
        limits = rt.limits
        if self.grid is not None:
            # DR baselines and targets are at the facility meter when there is one, like the
            # contract; otherwise at the racks' metered power.
            limits = self.grid.limits(
                limits,
                now_s=now_s,
                site_power_w=(
                    site_power_w
                    if self.facility is None
                    else self.facility.metered_w(now_s, site_power_w)
                ),
                topology=topo,
                tier=tier,
                decision=rt.decision,
            )
            rt.demand_response = DemandResponseStatus(**dataclasses.asdict(self.grid.status()))
            if self._client is not None and self.ha.is_leader():
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(policy.config.mqtt.timeout_s):
                        await self.grid.flush(self._client)
        if self.facility is not None:
            # The contract (and any DR limit) is at the facility meter: turn it into IT power.
            contract_w = policy.config.limits.contract_w
            limits = self.facility.limits(
                limits,
                now_s=now_s,
                it_power_w=site_power_w,
                fallback_w=math.inf if contract_w is None else contract_w,
            )
        decision, state = await asyncio.to_thread(
            self.decider,
            topo,
            snapshot,
            tier=tier,
            limits=limits,
            settings=policy.config.policy_settings(),
            state=rt.decision_state,
            now_s=mono_s,
            stale_rack=stale,
            sync_job=self.jobs.sync_job(),
        )
        if self.carbon is not None:
            # Flexible jobs follow the grid signal: their caps only ever go lower than allowed.
            ceiling = self.carbon.ceilings(now_s)
            if ceiling is not None:
                decision = dataclasses.replace(decision, cap_w=np.minimum(decision.cap_w, ceiling))
        prev = rt.ticks.last_tick_monotonic_s
        dt_s = 0.0 if math.isnan(prev) else max(0.0, mono_s - prev)
        rt.site_energy_j += site_power_w * dt_s
        if self.facility is not None:
            self.facility.account(
                now_s=now_s,
                dt_s=dt_s,
                it_power_w=site_power_w,
                gpu_power_w=snapshot.power_w,
                tier=tier,
            )
        rt.decision, rt.decision_state, rt.stale_rack = decision, state, stale
        urgent, due = await self._send_due(tick_started_s=started_s, decided_s=time.monotonic())
        rt.ticks.last_tick_s = now_s
        rt.ticks.last_tick_monotonic_s = mono_s
        self.notifier.notify("WATCHDOG=1")
        log.debug(
            "tick",
            site_power_w=round(site_power_w, 1),
            site_allowed_w=round(decision.site_allowed_w, 1),
            stale_racks=int(stale.sum()),
            commands_urgent=urgent,
            commands_due=due,
            connected=rt.mqtt_connected,
            backlog=rt.backlog,
        )
        summary = rt.tick_summary.observe(
            time.monotonic(),
            period_s=policy.config.logging.summary_period_s,
            site_power_w=site_power_w,
            site_allowed_w=decision.site_allowed_w,
            stale_racks=int(stale.sum()),
            commands_total=rt.book.sent_total,
        )
        if summary is not None:
            log.info("ticks", **summary, connected=rt.mqtt_connected, backlog=rt.backlog)

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
