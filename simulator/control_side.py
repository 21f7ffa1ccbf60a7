"""The closed loop's control side: the controller process and what reaches it.

Telemetry in (through the scenario's faults), the daemon's stages around the controller's
decision (`simulator.stages`), commands out to the rack agents (`simulator.fast_agents`). A
controller outage stops it; when it ends a new instance starts, as a restarted daemon does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from policies.decision import CappingSettings, Limits, PolicySettings
from policies.facility import it_budget
from policies.fleet import FleetState
from policies.safe_caps import derive_safe_caps, follow_site_limit
from policies.stages import Tick, dc_w, finish_caps, prepare
from simulator.baselines import ThresholdController
from simulator.carbon import FlexWork, flex_work
from simulator.cluster import SimCluster
from simulator.controllers import (
    Controller,
    NoController,
    RheostatController,
    StaticController,
    controller_topology,
    last_decision,
    set_topology,
)
from simulator.facility import FacilityRun
from simulator.fast_agents import FastAgents
from simulator.faults import FaultPlan, TelemetryPath, with_ratings
from simulator.grid import LimitKnowledge
from simulator.scenario import Scenario
from simulator.stages import control_stages

FloatArray = NDArray[np.float64]
CONTROLLERS = ("rheostat", "static", "threshold", "none")


def make_controller(
    name: str, cluster: SimCluster, settings: PolicySettings, scenario: Scenario
) -> Controller:
    """A built-in controller by name, seeing the cluster through DC-side limits."""
    topo = controller_topology(cluster.topology, cluster.params.psu_efficiency)
    if name == "none":
        return NoController()
    if name == "static":
        return StaticController(topo)
    if name == "threshold":
        return ThresholdController(topo)
    if name == "rheostat":
        # The racks' meters read wall power: the measured non-GPU power is reckoned DC-side
        # with the PSUs' own efficiency, the figure the ratings were scaled by.
        non_gpu = replace(settings.capping.non_gpu, psu_efficiency=cluster.params.psu_efficiency)
        settings = replace(settings, capping=replace(settings.capping, non_gpu=non_gpu))
        ramp = scenario.limits.ramp_w_per_s
        if ramp is not None:
            dc_ramp = dc_w(ramp, cluster.params.psu_efficiency)
            settings = PolicySettings(
                capping=_with_ramp(settings.capping, dc_ramp), dvfs=settings.dvfs
            )
        return RheostatController(
            topo, cluster.workloads.gpu_tier(), settings, sync_job=cluster.workloads.sync_job()
        )
    raise ValueError(f"unknown controller {name!r}; choose from {', '.join(CONTROLLERS)}")


def _with_ramp(capping: CappingSettings, ramp_w_per_s: float) -> CappingSettings:
    return replace(capping, site_ramp_up_w_per_s=ramp_w_per_s, site_ramp_down_w_per_s=ramp_w_per_s)


class ControlSide:
    """The controller process and what reaches it: telemetry in, commands out, limits known.

    A controller outage stops it; when it ends the controller restarts as a new instance (a new
    id, its sequence from 1, its decision state and fleet view lost), as a restarted daemon does.
    """

    def __init__(
        self,
        scenario: Scenario,
        cluster: SimCluster,
        *,
        controller: str | Callable[[SimCluster], Controller],
        settings: PolicySettings | None,
        known: LimitKnowledge,
        facility: FacilityRun,
    ) -> None:
        self.scenario = scenario
        self.facility = facility
        self._now = -scenario.controller.warmup_s
        self.cluster = cluster
        self.known = known
        self._make = controller
        self._settings = settings or PolicySettings()
        self.faults = FaultPlan(scenario, cluster)
        self.telemetry = TelemetryPath(cluster, self.faults)
        self.agents = FastAgents(cluster=cluster)
        self.instance = 0
        self._ratings: tuple[FloatArray, ...] | None = None
        #: The topology as the controller budgets it (DC side) under the ratings known now.
        self._topology = controller_topology(cluster.topology, cluster.params.psu_efficiency)
        self._tier = cluster.workloads.gpu_tier()
        self.flex: FlexWork | None = None
        self.ctl = self._start()
        self.flex = flex_work(cluster, scenario, self.ctl.name)
        #: The daemon's composition around the decision (`simulator.stages`).
        self.stages = control_stages(facility, known, self.flex)

    def _start(self) -> Controller:
        self.instance += 1
        self.seq = 0
        self.ctl_id = f"sim-{self.instance}"
        self.fleet = FleetState.empty(self.cluster.topology)
        self.down = False
        if callable(self._make):
            ctl = self._make(self.cluster)
        else:
            ctl = make_controller(self._make, self.cluster, self._settings, self.scenario)
        if self.flex is not None:
            self.flex.restart()
        if self._ratings is not None:
            set_topology(ctl, self._topology)
        self.safe_cap_w = self._safe_caps(ctl)
        #: The caps the policy loads with; `safe_cap_w` follows the limit in force from there.
        self.policy_safe_w = self.safe_cap_w
        return ctl

    def _safe_caps(self, ctl: Controller) -> FloatArray | None:
        """The safe caps Rheostat's commands carry, derived as the daemon derives them when it
        loads its policy: every GPU on them at once fits every usable limit and the contract in
        force at its start (with a facility, the IT power the contract leaves at the run's
        hottest outdoor temperature, no meter reading), less the allocation's site margin.
        Other controllers send none: their racks fall back to min caps."""
        if ctl.name != "rheostat":
            return None
        eff = self.cluster.params.psu_efficiency
        contract_w = self.known.contract_w(self._now)
        if self.facility.spec is not None:
            contract_w = it_budget(
                contract_w,
                outdoor_c=float(self.facility.outdoor_by_tick.max()),
                settings=self.facility.settings,
            ).budget_w
        return derive_safe_caps(
            self._topology,
            site_limit_w=dc_w(contract_w, eff),
            site_margin_frac=self._settings.capping.site_margin_frac,
        )

    def learn_ratings(self, ratings: tuple[FloatArray, ...]) -> None:
        """A feed failed or came back: the facility's monitoring tells the controller at once,
        and its safe caps are derived again for the new ratings."""
        self._ratings = ratings
        self._topology = controller_topology(
            with_ratings(self.cluster.topology, ratings), self.cluster.params.psu_efficiency
        )
        if not self.down:
            set_topology(self.ctl, self._topology)
            self.safe_cap_w = self.policy_safe_w = self._safe_caps(self.ctl)

    def tick(self, now: float, horizon_s: float) -> None:
        """One controller period: telemetry published, read, decided on, commands sent."""
        self._now = now
        self.telemetry.publish(now)
        if self.faults.controller_down(now):
            self.down = True
            return
        if self.down:
            self.ctl = self._start()
            self.telemetry.restart()
        cluster, fleet = self.cluster, self.fleet
        self.telemetry.deliver(fleet, now)
        stale = fleet.stale_racks(cluster.now_s, self.scenario.controller.stale_timeout_s)
        tick = Tick(
            now_s=now,
            mono_s=cluster.now_s,
            dt_s=self.scenario.controller.period_s,
            topology=cluster.topology,
            fleet=fleet,
            tier=self._tier,
            psu_efficiency=cluster.params.psu_efficiency,
            site_power_w=float(fleet.rack_power_w.sum()),
            horizon_s=horizon_s,
            stale_rack=stale,
        )
        limits = prepare(self.stages, tick)
        self._follow_safe_caps(limits)
        act = self.ctl.decide(fleet, limits, cluster.now_s, stale)
        if act is not None:
            cap_w, clock_mhz = act
            tick.decision = last_decision(self.ctl)
            self._send(now, finish_caps(self.stages, tick, cap_w), clock_mhz)

    def _follow_safe_caps(self, limits: Limits) -> None:
        """Safe caps that fit the site limit in force, as the daemon's commands carry them
        (`policies.safe_caps.follow_site_limit`)."""
        if self.safe_cap_w is None or self.policy_safe_w is None:
            return
        safe = follow_site_limit(
            self._topology,
            carried_w=self.safe_cap_w,
            policy_w=self.policy_safe_w,
            limits=limits,
            site_margin_frac=self._settings.capping.site_margin_frac,
        )
        if safe is not None:
            self.safe_cap_w = safe

    def _send(self, now: float, cap_w: FloatArray, clock: FloatArray) -> None:
        """Every rack's command of this decision (one seq per decision, epoch 0: no HA)."""
        self.seq += 1
        self.agents.deliver_fleet(
            ~self.faults.commands_lost(now),
            epoch=0,
            ctl=self.ctl_id,
            seq=self.seq,
            ttl_s=self.scenario.controller.command_ttl_s,
            cap_w=cap_w,
            sm_clock_max_mhz=clock,
            safe_cap_w=self.safe_cap_w,
        )
