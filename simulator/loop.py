"""The accelerated closed loop: simulator and controller in one process, no broker, no sleeping.

Each tick the cluster steps; every controller period the racks publish telemetry, the controller
reads a `FleetState` filled from what arrived (delayed, noisy; faults lose, delay or jitter it,
`simulator.faults`), and sends each rack a command that its agent accepts or refuses by the wire
protocol's rules and obeys after the actuation lag (`simulator.fast_agents`: epochs, sequence
numbers, a time to live on the agent's clock, then safe caps). The controller is told no future:
it budgets against the limit it knows (`simulator.grid.LimitKnowledge`: a contract step from its
notice, a demand-response event from its notification, a failed feed when it fails), while
compliance is measured every tick against the true limits and the power the physics produced.
Series for plots are kept at a stride so a day stays small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from policies.decision import PolicySettings
from policies.stages import dc_w
from simulator.build import build_cluster, full_power_w
from simulator.carbon import CarbonLog
from simulator.cluster import SimCluster
from simulator.control_side import CONTROLLERS, ControlSide, make_controller
from simulator.controllers import Controller
from simulator.facility import FacilityRun
from simulator.fast_agents import FastAgents
from simulator.grid import LimitKnowledge, SiteLimits
from simulator.oracle_run import OracleLog, OracleTracker, oracle_available
from simulator.rates import carbon_per_tick
from simulator.scenario import Scenario
from simulator.tolerance import OVER_TOL

FloatArray = NDArray[np.float64]
#: Samples kept per series for plots and reports.
MAX_SAMPLES = 2000

Progress = Callable[[float], None]
#: Re-exported: the controllers by name are part of the loop's interface.
__all__ = [
    "CONTROLLERS",
    "Compliance",
    "RunResult",
    "Series",
    "make_controller",
    "run",
    "run_with_baseline",
]


@dataclass(eq=False, kw_only=True)
class Series:
    """Time series sampled every `stride` ticks. Units in names; per-rack arrays are (t, rack)."""

    t_s: list[float] = field(default_factory=list)
    site_power_w: list[float] = field(default_factory=list)
    site_limit_w: list[float] = field(default_factory=list)
    contract_w: list[float] = field(default_factory=list)
    dr_limit_w: list[float] = field(default_factory=list)
    rack_power_w: list[FloatArray] = field(default_factory=list)
    #: Per rack, the draw with every GPU uncapped at its activity (`SimCluster.rack_demand_w`).
    rack_demand_w: list[FloatArray] = field(default_factory=list)
    tier_speed: list[FloatArray] = field(default_factory=list)
    tier_clock_mhz: list[FloatArray] = field(default_factory=list)
    #: Per tier, the mean power cap in force as a fraction of each GPU's maximum cap.
    tier_cap_frac: list[FloatArray] = field(default_factory=list)
    #: Power the caps allow and the site does not draw, per `SimCluster.undrawn_w`'s parts.
    undrawn_w: list[FloatArray] = field(default_factory=list)


@dataclass(eq=False, kw_only=True)
class Compliance:
    """Per-tick limit checks accumulated over a run. Units: s, W, fractions."""

    level_names: tuple[str, ...]
    seconds_over: dict[str, float]
    max_overshoot_frac: float = 0.0
    energy_j: float = 0.0
    carbon_lbs: float = 0.0
    max_ramp_w_per_s: float = 0.0
    ramp_violation_s: float = 0.0


@dataclass(eq=False, kw_only=True)
class RunResult:
    """What a run leaves for the summary and the report."""

    scenario: Scenario
    controller: str
    cluster: SimCluster
    limits: SiteLimits
    compliance: Compliance
    series: Series
    wall_s: float
    time_to_cap_s: list[float | None]
    job_work: FloatArray
    job_tier: NDArray[np.int8]
    job_gpus: FloatArray
    job_names: list[str]
    #: Facility meter, cooling and emissions accounting (IT feed alone without a facility spec).
    facility: FacilityRun | None = None
    #: What the carbon policy saw of each shifted job (targets, slowdown, stop times).
    carbon: CarbonLog | None = None
    #: The oracle's samples (`simulator.oracle_run`); None for the reference or without HiGHS.
    oracle: OracleLog | None = None
    #: The rack agents: commands applied and refused, fallbacks to safe caps.
    agents: FastAgents | None = None
    #: Per tick from t = 0: racks on their safe caps (TTL ran out), for fault tests.
    safe_racks: list[int] = field(default_factory=list)

    @property
    def realtime_factor(self) -> float:
        return self.scenario.duration_s / max(self.wall_s, 1e-9)


def run(
    scenario: Scenario,
    *,
    controller: str | Callable[[SimCluster], Controller] = "rheostat",
    settings: PolicySettings | None = None,
    unlimited: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """Run a scenario to its end. `unlimited` is the reference: no limits, no breaker trips."""
    warm_ticks = round(scenario.controller.warmup_s / scenario.tick_s)
    cluster = build_cluster(
        scenario, enforce_breakers=not unlimited, warmup_s=warm_ticks * scenario.tick_s
    )
    topo = cluster.topology
    eff = cluster.params.psu_efficiency
    full_w = full_power_w(topo, eff)
    limits = SiteLimits(
        scenario, base_limit_w=float(topo.levels[-1].limit_w[0]), full_power_w=full_w
    )
    n_ticks = int(np.ceil(scenario.duration_s / scenario.tick_s))
    facility = FacilityRun.create(scenario, full_power_w=full_w, n_ticks=n_ticks)
    side = ControlSide(
        scenario,
        cluster,
        controller=controller,
        settings=settings,
        known=LimitKnowledge(limits),
        facility=facility,
    )
    period = max(1, round(scenario.controller.period_s / scenario.tick_s))
    stride = max(1, -(-n_ticks // MAX_SAMPLES))
    level_w = _level_reducers(cluster)
    usable = [lv.usable_w for lv in topo.levels]
    comp = Compliance(
        level_names=tuple(lv.name for lv in topo.levels),
        seconds_over={lv.name: 0.0 for lv in topo.levels},
    )
    series = Series()
    carbon = (
        carbon_per_tick(n_ticks, scenario.tick_s, start_s=scenario.grid.carbon_start_s)
        if scenario.grid.carbon == "caiso"
        else None
    )
    steps = limits.step_times_s()
    step_limits = [float(w) for w in limits.step_limit_w]
    time_to_cap: list[float | None] = [None] * len(steps)
    tier = cluster.workloads.gpu_tier()
    tier_count = np.maximum(np.bincount(tier, minlength=4), 1).astype(np.float64)
    ramp_limit = scenario.limits.ramp_w_per_s
    prev_site = float("nan")
    dt = scenario.tick_s
    work_at_start = cluster.workloads.work.copy()
    oracle = (
        OracleTracker.create(cluster, duration_s=scenario.duration_s)
        if not unlimited and oracle_available()
        else None
    )
    safe_racks: list[int] = []
    started = time.perf_counter()
    for k in range(-warm_ticks, n_ticks):
        now = k * dt
        if not unlimited:
            ratings = side.faults.ratings(now)
            if ratings is not None:  # a feed failed or came back: the truth changes at once
                cluster.breakers.rating_w[:] = ratings[topo.rack_level]
                usable = [lim * lv.derating for lim, lv in zip(ratings, topo.levels, strict=True)]
                side.learn_ratings(ratings)
            side.faults.set_clocks(now, side.agents)
            side.agents.advance(now)
        cluster.step()
        site_w = cluster.site_power_w
        limits.observe(now, facility.step(now, site_w))
        site_limit = limits.limit_w(now)
        if not unlimited and k % period == 0:
            side.tick(now, period * dt + cluster.params.actuation_lag_s)
        if k < 0:
            continue
        if k == 0:
            work_at_start = cluster.workloads.work.copy()
        if oracle is not None:
            it_w = site_limit if facility.spec is None else facility.budget_w
            oracle.observe(k, cluster, dc_w(it_w, eff), usable_w=[u * eff for u in usable])
        if not unlimited:
            _check(
                comp, level_w=level_w, usable=usable, site_w=site_w, site_limit_w=site_limit, dt=dt
            )
            safe_racks.append(int(side.agents.on_safe_cap.sum()))
        facility.account(
            k,
            facility_limit_w=site_limit,
            gpu_power_w=cluster.gpu.power_w,
            tier=tier,
            check=not unlimited,
        )
        comp.energy_j += site_w * dt
        if carbon is not None:
            comp.carbon_lbs += site_w * dt / 3.6e9 * float(carbon[k])
        if not math.isnan(prev_site):
            ramp = abs(site_w - prev_site) / dt
            comp.max_ramp_w_per_s = max(comp.max_ramp_w_per_s, ramp)
            if ramp_limit is not None and ramp > ramp_limit * 1.05:
                comp.ramp_violation_s += dt
        prev_site = site_w
        for i, at in enumerate(steps):
            if time_to_cap[i] is None and now >= at and site_w <= step_limits[i]:
                time_to_cap[i] = now - at
        if k % stride == 0:
            _sample(
                series,
                cluster=cluster,
                limits=limits,
                now=now,
                site_limit=site_limit,
                tier=tier,
                tier_count=tier_count,
            )
        if progress is not None and k % 1000 == 0:
            progress(k / n_ticks)
    wall = time.perf_counter() - started
    if progress is not None:
        progress(1.0)
    if facility.spec is not None:
        comp.max_overshoot_frac = max(comp.max_overshoot_frac, facility.max_overshoot_frac)
    wl = cluster.workloads
    ctl = side.ctl
    return RunResult(
        scenario=scenario,
        controller="unlimited" if unlimited else ctl.name,
        cluster=cluster,
        limits=limits,
        compliance=comp,
        series=series,
        wall_s=wall,
        time_to_cap_s=time_to_cap,
        job_work=wl.work - work_at_start,
        job_tier=wl.job_tier,
        job_gpus=wl.job_n_gpus,
        job_names=wl.job_names(),
        facility=facility,
        carbon=None if side.flex is None else side.flex.log,
        oracle=None if oracle is None else oracle.log,
        agents=None if unlimited else side.agents,
        safe_racks=safe_racks,
    )


def _level_reducers(cluster: SimCluster) -> list[Callable[[], FloatArray]]:
    """Per level, a function giving each group's facility power this tick (racks and above)."""
    topo = cluster.topology

    def unmetered() -> FloatArray:
        return np.zeros(0)  # below racks: no separate meter in the simulator

    def racks() -> FloatArray:
        return cluster.rack_power_w

    def summed(idx: NDArray[np.int32], size: int) -> Callable[[], FloatArray]:
        def total() -> FloatArray:
            out = np.bincount(idx, weights=cluster.rack_power_w, minlength=size)
            return out.astype(np.float64, copy=False)

        return total

    out: list[Callable[[], FloatArray]] = []
    for k, level in enumerate(topo.levels):
        if k < topo.rack_level:
            out.append(unmetered)
        elif k == topo.rack_level:
            out.append(racks)
        else:
            out.append(summed(_rack_to_level(cluster, k), level.size))
    return out


def _rack_to_level(cluster: SimCluster, level: int) -> NDArray[np.int32]:
    topo = cluster.topology
    group = np.arange(topo.n_racks, dtype=np.int32)
    for k in range(topo.rack_level, level):
        group = topo.levels[k].parent[group]
    return group


def _check(
    comp: Compliance,
    *,
    level_w: list[Callable[[], FloatArray]],
    usable: list[FloatArray],
    site_w: float,
    site_limit_w: float,
    dt: float,
) -> None:
    last = len(usable) - 1
    for k, name in enumerate(comp.level_names):
        if k == last:
            power = np.array([site_w])
            limit = np.minimum(usable[k], site_limit_w)
        else:
            power = level_w[k]()
            if power.size == 0:
                continue
            limit = usable[k]
        ratio = float(np.max(power / limit))
        if ratio > 1.0 + OVER_TOL:
            comp.seconds_over[name] += dt
            comp.max_overshoot_frac = max(comp.max_overshoot_frac, ratio - 1.0)


def _sample(
    series: Series,
    *,
    cluster: SimCluster,
    limits: SiteLimits,
    now: float,
    site_limit: float,
    tier: NDArray[np.int8],
    tier_count: FloatArray,
) -> None:
    series.t_s.append(now)
    series.site_power_w.append(cluster.site_power_w)
    series.site_limit_w.append(site_limit)
    series.contract_w.append(limits.contract_w(now))
    series.dr_limit_w.append(limits.dr_limit_w)
    series.rack_power_w.append(cluster.rack_power_w.copy())
    series.rack_demand_w.append(cluster.rack_demand_w())
    speed = np.bincount(tier, weights=cluster.gpu.speed, minlength=4) / tier_count
    clock = np.bincount(
        tier, weights=cluster.gpu.clock_frac * cluster.consts.max_clock_mhz, minlength=4
    )
    series.tier_speed.append(speed)
    series.tier_clock_mhz.append(clock / tier_count)
    cap_frac = cluster.cap_w / cluster.topology.gpu_max_cap_w
    series.tier_cap_frac.append(np.bincount(tier, weights=cap_frac, minlength=4) / tier_count)
    series.undrawn_w.append(cluster.undrawn_w())


def run_with_baseline(
    scenario: Scenario,
    *,
    controller: str | Callable[[SimCluster], Controller] = "rheostat",
    settings: PolicySettings | None = None,
    progress: Progress | None = None,
) -> tuple[RunResult, RunResult]:
    """The controlled run and the unlimited reference its throughput is measured against."""
    reference = run(scenario, unlimited=True)
    controlled = run(scenario, controller=controller, settings=settings, progress=progress)
    return controlled, reference
