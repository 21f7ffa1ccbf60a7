"""The daemon's control tick: every period, snapshot, stages, decision, commands.

`TickLoop` is a mixin of `controller.daemon.Controller` (its `tick` task): `_tick_loop` keeps
the period, counts and logs late ticks, and keeps the previous commands in force when a tick
fails; `_tick` copies the fleet's arrays, marks stale racks, runs the stages' limits
(`policies.stages.prepare`), calls the decider (`policies.pipeline.decide`) in a worker thread
so a slow decision never blocks ingest, applies the stages' ceilings (`finish`) and sends what
is due. `Notifier` and `Decider` are what the daemon is given from outside: systemd's notify
socket, and the decision core.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import aiomqtt
import numpy as np
import structlog

from controller.grid.hook import GridHook
from controller.ha.runner import HaRunner
from controller.mqtt_client import Client
from controller.nodes import NodeAssembler
from controller.policy_file import Policy
from controller.reload import tier_table
from controller.runtime import DemandResponseStatus, Runtime
from controller.shard.pool import IngestPool
from policies.decision import Decision, DecisionState, Limits, PolicySettings
from policies.errors import RheostatError
from policies.fleet import FleetState
from policies.lending import lenders
from policies.safe_caps import follow_site_limit, site_limit_in_force
from policies.stages import Stage, Tick, finish, prepare
from policies.topology import Topology
from policies.workspace import DecisionWorkspace

log = structlog.get_logger("rheostat.controller")


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
        workspace: DecisionWorkspace | None = None,
        lender: np.ndarray[Any, np.dtype[np.bool_]] | None = None,
    ) -> tuple[Decision, DecisionState]: ...


class TickLoop:
    """The tick half of the daemon (a mixin: the attributes below are the controller's)."""

    runtime: Runtime
    decider: Decider
    notifier: Notifier
    stages: list[Stage]
    grid: GridHook | None
    nodes: NodeAssembler | None
    pool: IngestPool | None
    ha: HaRunner
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    _client: Client | None
    _state_lock: asyncio.Lock

    if TYPE_CHECKING:  # provided by `PolicyReload` and `Controller`; for the type checker only

        def _swap_policy(self, policy: Policy) -> None: ...

        async def _send_due(
            self, *, tick_started_s: float | None = None, decided_s: float | None = None
        ) -> tuple[int, int]: ...

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

    def _follow_safe_caps(self, limits: Limits) -> None:
        """Commands carry safe caps that fit the site limit in force (a demand-response level
        under the contract included): `policies.safe_caps.follow_site_limit`."""
        rt = self.runtime
        policy, carried = rt.policy, rt.book.safe_cap_w
        if carried is None:
            return
        safe = follow_site_limit(
            policy.topology,
            carried_w=carried,
            policy_w=policy.safe_cap_w,
            limits=limits,
            site_margin_frac=policy.config.capping.site_margin_frac,
        )
        if safe is not None and rt.book.set_safe_caps(safe):
            log.info(
                "safe caps follow the site limit in force",
                site_limit_w=site_limit_in_force(policy.topology, limits),
                safe_total_w=round(float(safe.sum())),
                policy_total_w=round(float(policy.safe_cap_w.sum())),
            )

    def _lenders(self, snapshot: FleetState) -> np.ndarray[Any, np.dtype[np.bool_]] | None:
        """The GPUs that may lend (`capping.lend.lender_classes`); None: every GPU, or no
        lending at all."""
        lend = self.runtime.policy.config.capping.lend
        if not lend.enabled or lend.lender_classes is None:
            return None
        return lenders(self.runtime.classes.names, snapshot.workload_class, lend.lender_classes)

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
            rt.tier_table = tier_table(policy, rt.classes)
        snapshot = rt.fleet.copy()
        tier = rt.tier_table[snapshot.workload_class]
        stale = snapshot.stale_racks(mono_s, policy.config.control.stale_after_s)
        site_power_w = float(snapshot.rack_power_w.sum())
        prev = rt.ticks.last_tick_monotonic_s
        dt_s = 0.0 if math.isnan(prev) else max(0.0, mono_s - prev)
        tick = Tick(
            now_s=now_s,
            mono_s=mono_s,
            dt_s=dt_s,
            topology=topo,
            fleet=snapshot,
            tier=tier,
            psu_efficiency=policy.config.limits.psu_efficiency,
            site_power_w=site_power_w,
            base=rt.limits,
            stale_rack=stale,
            decision=rt.decision,
        )
        limits = prepare(self.stages, tick)
        self._follow_safe_caps(limits)
        if self.grid is not None:
            rt.demand_response = DemandResponseStatus(**dataclasses.asdict(self.grid.status()))
            if self._client is not None and self.ha.is_leader():
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(policy.config.mqtt.timeout_s):
                        await self.grid.flush(self._client)
        rt.workspace = DecisionWorkspace.sized(rt.workspace, topo.n_gpus)
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
            sync_job=tick.sync_job,
            workspace=rt.workspace,
            lender=self._lenders(snapshot),
        )
        rt.site_energy_j += site_power_w * dt_s
        decision = finish(self.stages, tick, decision)
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
