"""The scenario's faults as the closed loop applies them: what is lost, late, skewed or failed.

`FaultPlan` answers per tick: is the controller or the broker down, which racks' telemetry and
commands are lost, how late each rack's telemetry arrives, how each agent's clock runs, and the
breaker ratings in force after feed failures. `TelemetryPath` carries each rack's readings to the
controller through those faults: lost, delayed, jittered (messages can overtake each other; the
controller keeps the newest reading, by when it was taken, as ingest does by sequence number).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from policies.fleet import FleetState
from policies.topology import Topology
from simulator.cluster import Reading, SimCluster
from simulator.fast_agents import FastAgents
from simulator.fault_specs import (
    BrokerOutage,
    ClockSkew,
    CommandLoss,
    ControllerOutage,
    FaultSpec,
    FeedFailure,
    TelemetryDelay,
)
from simulator.scenario import Scenario

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


class FaultPlan:
    """The scenario's faults against one cluster (module doc). Times are run seconds."""

    def __init__(self, scenario: Scenario, cluster: SimCluster) -> None:
        faults = scenario.faults
        self.topology = cluster.topology
        self.n_racks = cluster.topology.n_racks
        self._rng = np.random.default_rng(scenario.seed + 7919)
        self.controller_outages = [f for f in faults if isinstance(f, ControllerOutage)]
        self.broker_outages = [f for f in faults if isinstance(f, BrokerOutage)]
        self.telemetry_losses = [f for f in faults if isinstance(f, FaultSpec)]
        self.command_losses = [f for f in faults if isinstance(f, CommandLoss)]
        self.delays = [f for f in faults if isinstance(f, TelemetryDelay)]
        self.skews = [f for f in faults if isinstance(f, ClockSkew)]
        self.feeds = [f for f in faults if isinstance(f, FeedFailure)]
        eff = cluster.params.psu_efficiency
        topo = cluster.topology
        self.base_limit_w = tuple(lv.limit_w.copy() for lv in topo.levels)
        self._full_w = tuple(
            (topo.group_sum(k, topo.gpu_max_cap_w) + topo.overhead_under(k)) / eff
            for k in range(len(topo.levels))
        )
        self._feed_key: tuple[bool, ...] = tuple(False for _ in self.feeds)

    @property
    def has_delays(self) -> bool:
        return bool(self.delays)

    def controller_down(self, now_s: float) -> bool:
        return any(f.active(now_s) for f in self.controller_outages)

    def broker_down(self, now_s: float) -> bool:
        return any(f.active(now_s) for f in self.broker_outages)

    def telemetry_lost(self, now_s: float) -> BoolArray:
        """Racks whose telemetry published now never arrives."""
        lost = np.full(self.n_racks, self.broker_down(now_s))
        for f in self.telemetry_losses:
            if f.at_s <= now_s < f.at_s + f.duration_s:
                lost[f.rack] = True
        return lost

    def commands_lost(self, now_s: float) -> BoolArray:
        """Racks whose command sent now never arrives (broker down, or lost by chance)."""
        lost = np.full(self.n_racks, self.broker_down(now_s))
        for f in self.command_losses:
            if f.active(now_s):
                draw = self._rng.random(self.n_racks) < f.fraction
                if f.rack is None:
                    lost |= draw
                else:
                    lost[f.rack] |= bool(draw[f.rack])
        return lost

    def delay_s(self, now_s: float) -> FloatArray:
        """Per rack, how much later than usual its telemetry published now arrives. Units: s."""
        extra = np.zeros(self.n_racks)
        for f in self.delays:
            if not f.active(now_s):
                continue
            add = np.full(self.n_racks, f.delay_s)
            if f.jitter_s:
                add += self._rng.uniform(0.0, f.jitter_s, self.n_racks)
            if f.rack is None:
                extra += add
            else:
                extra[f.rack] += add[f.rack]
        return extra

    def set_clocks(self, now_s: float, agents: FastAgents) -> None:
        """Each agent's clock rate and wall-clock offset in force now."""
        agents.clock_rate[:] = 1.0
        agents.clock_offset_s[:] = 0.0
        for f in self.skews:
            if f.active(now_s):
                racks = slice(None) if f.rack is None else f.rack
                agents.clock_rate[racks] = f.rate
                agents.clock_offset_s[racks] = f.offset_s

    def ratings(self, now_s: float) -> tuple[FloatArray, ...] | None:
        """Every level's rated limit after the feed failures in force, if that changed. Units: W.

        None when nothing changed since the last call.
        """
        key = tuple(f.active(now_s) for f in self.feeds)
        if key == self._feed_key:
            return None
        self._feed_key = key
        limits = [lim.copy() for lim in self.base_limit_w]
        rack_level = self.topology.rack_level
        for f, on in zip(self.feeds, key, strict=True):
            if not on:
                continue
            level, group = (rack_level, f.rack) if f.rack is not None else (rack_level + 1, f.row)
            assert group is not None
            failed = f.rating_frac * float(self._full_w[level][group])
            limits[level][group] = min(limits[level][group], failed)
        return tuple(limits)


def with_ratings(topology: Topology, limit_w: tuple[FloatArray, ...]) -> Topology:
    """The topology with these rated limits per level (feed failures applied)."""
    levels = tuple(
        replace(lv, limit_w=lim.copy()) for lv, lim in zip(topology.levels, limit_w, strict=True)
    )
    return Topology.create(
        site=topology.site,
        gpu_model=topology.gpu_model,
        gpu_server=topology.gpu_server,
        levels=levels,
        rack_level=topology.rack_level,
    )


class TelemetryPath:
    """Each rack's readings on their way to the controller, through loss, delay and jitter."""

    def __init__(self, cluster: SimCluster, faults: FaultPlan) -> None:
        self.cluster = cluster
        self.faults = faults
        topo = cluster.topology
        self._gpu_rack = topo.gpu_group[topo.rack_level]
        self._class_code = cluster.workloads.gpu_class() + 1  # 0 is "unknown" in FleetState
        self._readings: dict[float, Reading] = {}
        self._pending: list[deque[tuple[float, float]]] = [deque() for _ in range(topo.n_racks)]
        self._newest_s = np.full(topo.n_racks, -np.inf)
        #: Without delays, the racks whose reading published this period arrived.
        self._fresh = np.ones(topo.n_racks, dtype=bool)

    def restart(self) -> None:
        """A new controller process: it has seen no reading yet (messages in flight still land)."""
        self._newest_s[:] = -np.inf

    def publish(self, now_s: float) -> None:
        """Every rack publishes its current (sensor-delayed) reading; faults decide its fate."""
        reading = self.cluster.reading()
        lost = self.faults.telemetry_lost(now_s)
        if not self.faults.has_delays:
            self._fresh = ~lost
            return
        self._readings[reading.now_s] = reading
        arrive = now_s + self.faults.delay_s(now_s)
        for rack in np.flatnonzero(~lost).tolist():
            self._pending[rack].append((float(arrive[rack]), reading.now_s))

    def deliver(self, fleet: FleetState, now_s: float) -> None:
        """Write into `fleet` what has arrived by `now_s` (the newest reading of each rack)."""
        if not self.faults.has_delays:
            fresh = self._fresh
            self.cluster.fill_fleet(fleet, fresh_racks=None if fresh.all() else fresh)
            return
        by_reading: dict[float, list[int]] = {}
        for rack, queue in enumerate(self._pending):
            keep: deque[tuple[float, float]] = deque()
            best = -np.inf
            for arrive, taken in queue:
                if arrive <= now_s:
                    best = max(best, taken)
                else:
                    keep.append((arrive, taken))
            self._pending[rack] = keep
            if best > self._newest_s[rack]:
                self._newest_s[rack] = best
                by_reading.setdefault(best, []).append(rack)
        for taken, racks in by_reading.items():
            mask = np.zeros(self.faults.n_racks, dtype=bool)
            mask[racks] = True
            self._fill(fleet, self._readings[taken], mask)
        needed = {taken for queue in self._pending for _, taken in queue}
        self._readings = {t: r for t, r in self._readings.items() if t in needed}

    def _fill(self, fleet: FleetState, r: Reading, racks: BoolArray) -> None:
        """`SimCluster.fill_fleet` for one past reading and some racks."""
        rows = racks[self._gpu_rack]
        fleet.power_w[rows] = r.power_w[rows]
        fleet.sm_clock_mhz[rows] = r.sm_clock_mhz[rows]
        fleet.util[rows] = r.util[rows]
        fleet.mem_util[rows] = r.mem_util[rows]
        fleet.temp_c[rows] = r.temp_c[rows]
        fleet.cap_w[rows] = r.cap_w[rows]
        fleet.workload_class[rows] = self._class_code[rows]
        fleet.rack_power_w[racks] = r.rack_power_w[racks]
        fleet.rack_last_seen_s[racks] = r.now_s
        fleet.rack_seq[racks] += 1
