"""Controllers the closed loop can run: a small Protocol and the built-in ones.

A controller sees what a real one would (a `FleetState` filled from delayed, noisy telemetry,
the limits in force, the time, which racks are stale) and answers caps and clock ceilings for
every GPU, or None to leave the GPUs alone. The scoreboard's `threshold` controller and any
other plug in by implementing `decide`.

Limits reach controllers on the DC side: a breaker rated L feeds at most L x PSU efficiency of
GPU and server load, so `controller_topology` scales every rating by the PSU efficiency and the
loop does the same to the site limit. Caps that fit those limits keep facility power inside the
real ones.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from policies.decision import Decision, DecisionState, Limits, PolicySettings
from policies.fleet import FleetState
from policies.lending import lenders
from policies.pipeline import decide
from policies.topology import Topology, dc_side
from policies.workspace import DecisionWorkspace
from simulator.workloads import CLASSES

#: Names of the workload-class codes the simulated fleet reports (`SimCluster.fill_fleet`:
#: a workload's class code plus one, 0 unknown), as the daemon's class table would hold them.
CLASS_NAMES: tuple[str, ...] = ("<unknown>", *CLASSES)

FloatArray = NDArray[np.float64]
Actuation = tuple[FloatArray, FloatArray]


class Controller(Protocol):
    """Anything that turns a fleet snapshot and limits into caps and clock ceilings."""

    name: str

    def decide(
        self,
        fleet: FleetState,
        limits: Limits,
        now_s: float,
        stale_rack: NDArray[np.bool_],
    ) -> Actuation | None: ...


def controller_topology(topology: Topology, psu_efficiency: float) -> Topology:
    """The topology as the controller budgets it: every rating scaled to the DC side."""
    return dc_side(topology, psu_efficiency)


def set_topology(controller: Controller, topology: Topology) -> None:
    """Give a running controller new ratings (a feed failed or came back), DC-side.

    Built-in controllers (and a wrapper's `inner` one) read their limits from `topology`; the
    decision core rebuilds its plan when the topology object changes.
    """
    inner = getattr(controller, "inner", None)
    if inner is not None:
        set_topology(inner, topology)
    if hasattr(controller, "topology"):
        controller.topology = topology
    if isinstance(controller, StaticController):
        controller.forget()


def last_decision(controller: Controller) -> Decision | None:
    """The decision core's last decision behind a controller's caps (a wrapper's `inner`
    one's), for the stages that lower caps after the core (the carbon plan keeps the core's
    tier floors); None for a controller without one."""
    inner = getattr(controller, "inner", None)
    if inner is not None:
        return last_decision(inner)
    return controller.decision if isinstance(controller, RheostatController) else None


class NoController:
    """Leaves every GPU at its max cap: the uncontrolled baseline."""

    name = "none"

    def decide(
        self,
        fleet: FleetState,
        limits: Limits,
        now_s: float,
        stale_rack: NDArray[np.bool_],
    ) -> Actuation | None:
        del fleet, limits, now_s, stale_rack
        return None


class StaticController:
    """One uniform cap fraction for every GPU that fits every limit at full load, blind to demand.

    What a site does without a controller: derate everything once so the worst case fits. It
    re-derives the fraction when the site limit changes, and ignores tiers and telemetry.
    """

    name = "static"

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._last: tuple[float, Actuation] | None = None

    def forget(self) -> None:
        """Drop the cached derating (the ratings changed)."""
        self._last = None

    def decide(
        self,
        fleet: FleetState,
        limits: Limits,
        now_s: float,
        stale_rack: NDArray[np.bool_],
    ) -> Actuation | None:
        del fleet, now_s, stale_rack
        topo = self.topology
        site_w = limits.site_limit_w
        site_key = float("inf") if site_w is None else site_w
        if self._last is not None and self._last[0] == site_key:
            return self._last[1]
        span = topo.gpu_max_cap_w - topo.gpu_min_cap_w
        frac = 1.0
        for k, level in enumerate(topo.levels):
            usable = level.usable_w
            if k == len(topo.levels) - 1 and site_w is not None:
                usable = np.minimum(usable, site_w)
            floor = topo.group_sum(k, topo.gpu_min_cap_w) + topo.overhead_under(k)
            room = topo.group_sum(k, span)
            with np.errstate(divide="ignore", invalid="ignore"):
                level_frac = np.where(room > 0, (usable - floor) / room, 1.0)
            frac = min(frac, float(np.min(level_frac)))
        frac = float(np.clip(frac, 0.0, 1.0))
        caps = topo.gpu_min_cap_w + span * frac
        clocks = np.full(topo.n_gpus, 1e4)
        self._last = (site_key, (caps, clocks))
        return caps, clocks


class RheostatController:
    """The production decision core, `policies.pipeline.decide`, with its state carried."""

    name = "rheostat"

    def __init__(
        self,
        topology: Topology,
        tier: NDArray[np.int8],
        settings: PolicySettings,
        *,
        sync_job: NDArray[np.int32] | None = None,
    ) -> None:
        self.topology = topology
        self.tier = tier
        self.settings = settings
        #: The scheduler's synchronous jobs (`policies.pacing.pace_ceiling`), None if unknown.
        self.sync_job = sync_job
        self.state: DecisionState | None = None
        self.decision: Decision | None = None
        self.workspace: DecisionWorkspace | None = None
        self.site_allowed_w = float("nan")

    def decide(
        self,
        fleet: FleetState,
        limits: Limits,
        now_s: float,
        stale_rack: NDArray[np.bool_],
    ) -> Actuation | None:
        self.workspace = DecisionWorkspace.sized(self.workspace, self.topology.n_gpus)
        decision, self.state = decide(
            self.topology,
            fleet,
            tier=self.tier,
            limits=limits,
            settings=self.settings,
            state=self.state,
            now_s=now_s,
            stale_rack=stale_rack if stale_rack.any() else None,
            sync_job=self.sync_job,
            workspace=self.workspace,
            lender=lenders(
                CLASS_NAMES, fleet.workload_class, self.settings.capping.lend.lender_classes
            ),
        )
        self.site_allowed_w = decision.site_allowed_w
        self.decision = decision
        return decision.cap_w, decision.sm_clock_max_mhz
