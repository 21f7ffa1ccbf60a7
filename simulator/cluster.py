"""The simulated cluster: GPUs, servers, rack breakers and workloads stepped together in numpy.

Both ways of running share it: the accelerated closed loop calls `step` as fast as it can, and the
MQTT rack agents call it on a (scaled) wall clock. Commands take effect `actuation_lag_s` after they
are given; telemetry is read `telemetry_delay_s` late and with sensor noise, so a controller sees
what a real one would.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray

from policies.fleet import FleetState
from policies.topology import Topology
from simulator.breakers import Breakers
from simulator.physics import GpuConsts, GpuState, PhysicsParams, step_gpus
from simulator.servers import idle_frac_table
from simulator.workloads import WorkloadSet

FloatArray = NDArray[np.float64]
log = structlog.get_logger("rheostat.simulator")

#: Where power the caps allow lies undrawn (`SimCluster.undrawn_w`), in its order.
UNDRAWN_PARTS = ("sync", "service", "idle", "non_gpu")

#: Pre-drawn noise rows cycled through, so sensor noise costs no random draws per tick.
_NOISE_ROWS = 64


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Reading:
    """What sensors report for every GPU at one instant (noisy power). Units in names."""

    now_s: float
    power_w: FloatArray
    sm_clock_mhz: FloatArray
    util: FloatArray
    mem_util: FloatArray
    temp_c: FloatArray
    cap_w: FloatArray
    rack_power_w: FloatArray


class SimCluster:
    """A cluster under simulation. Not thread-safe; one owner steps it.

    `cap_w`/`clock_max_mhz` are the limits in force on the GPUs now; `site_power_w` and
    `rack_power_w` are facility-side (after PSU losses, including non-GPU server power).

    A server's non-GPU power is the topology's `overhead_w` (its peak, what the controller
    budgets) at full GPU load and `non_gpu_idle_frac` of it with idle GPUs, linear in between
    (`simulator.servers`); None takes each server type's own fraction, 1.0 keeps it fixed.
    """

    def __init__(
        self,
        topology: Topology,
        workloads: WorkloadSet,
        params: PhysicsParams,
        *,
        tick_s: float,
        seed: int,
        enforce_breakers: bool = True,
        non_gpu_idle_frac: float | None = None,
    ) -> None:
        n = topology.n_gpus
        if workloads.n_gpus != n:
            raise ValueError("workloads and topology disagree on the GPU count")
        self.topology = topology
        self.workloads = workloads
        self.params = params
        self.tick_s = float(tick_s)
        self.enforce_breakers = enforce_breakers
        self.now_s = 0.0
        self.tick = 0
        self.consts = GpuConsts.for_models(topology.gpu_model)
        self.gpu = GpuState.initial(topology.gpu_model, params.inlet_temp_c)
        self.cap_w = topology.gpu_max_cap_w.copy()
        self.clock_max_mhz = self.consts.max_clock_mhz.copy()
        self._in_flight: deque[tuple[float, slice | NDArray[np.intp], FloatArray, FloatArray]] = (
            deque()
        )
        self._server_rack = topology.levels[0].parent
        self._gpu_rack = topology.gpu_group[topology.rack_level]
        self._rack_parent_levels = topology.levels[1 : topology.rack_level]
        self._server_overhead_w = topology.levels[0].overhead_w
        n_servers = topology.levels[0].size
        self._gpu_server = topology.gpu_server
        self._n_servers = n_servers
        self._server_gpus = np.maximum(np.bincount(topology.gpu_server, minlength=n_servers), 1)
        server_model = np.zeros(n_servers, dtype=np.int64)
        server_model[topology.gpu_server] = topology.gpu_model
        self._server_idle_frac = (
            idle_frac_table()[server_model]
            if non_gpu_idle_frac is None
            else np.full(n_servers, float(non_gpu_idle_frac))
        )
        self._rack_of_server = self._server_rack_of_server()
        #: Non-GPU power of powered servers: the part drawn whatever the load, and the span.
        self._server_fixed_w = np.zeros(n_servers)
        self._server_span_w = np.zeros(n_servers)
        self.breakers = Breakers.create(topology.racks.limit_w.copy())
        self.powered = np.ones(n, dtype=bool)
        #: No rack has tripped: multiplications by `powered` can be skipped.
        self._all_powered = True
        self._server_overhead_on_w = self._server_overhead_w.copy()
        self._rack_server_overhead_on_w = np.zeros(0)
        self._rack_overhead_on_w = np.zeros(0)
        self._sum_overheads()
        self._class_code = workloads.gpu_class() + 1  # code 0 is "unknown" in FleetState
        self.util = np.zeros(n)
        self.mem_util = np.zeros(n)
        #: Each GPU's dynamic-power activity this tick (0 idle or dark, 1 flat out).
        self.activity = np.zeros(n)
        self.rack_power_w = np.zeros(topology.n_racks)
        self.site_power_w = 0.0
        self.job_speed = np.ones(workloads.n_jobs)
        rng = np.random.default_rng(seed)
        self._rng = rng
        self._noise = 1.0 + params.sensor_noise_frac * rng.standard_normal((_NOISE_ROWS, n))
        delay_ticks = max(0, round(params.telemetry_delay_s / self.tick_s))
        self._history: list[Reading] = []
        self._delay_ticks = delay_ticks
        self.trips: list[tuple[float, str]] = []

    # ------------------------------------------------------------------ actuation
    def command(
        self,
        cap_w: FloatArray,
        clock_max_mhz: FloatArray,
        rows: slice | NDArray[np.intp] | None = None,
    ) -> None:
        """Give new caps and clock ceilings; the GPUs obey them after the actuation lag.

        `rows` selects the GPUs (a slice, or an index array for GPUs of scattered racks).

        Commands queue in order, so a controller faster than the lag still sees each one land.
        """
        rows = rows if rows is not None else slice(0, self.topology.n_gpus)
        caps = np.clip(cap_w, self.topology.gpu_min_cap_w[rows], self.topology.gpu_max_cap_w[rows])
        clocks = np.clip(clock_max_mhz, 0.0, self.consts.max_clock_mhz[rows])
        self._in_flight.append((self.now_s + self.params.actuation_lag_s, rows, caps, clocks))

    def _apply_due(self) -> None:
        while self._in_flight and self._in_flight[0][0] <= self.now_s + 1e-9:
            _, rows, caps, clocks = self._in_flight.popleft()
            self.cap_w = self.cap_w.copy()
            self.cap_w[rows] = caps
            self.clock_max_mhz[rows] = clocks

    # ------------------------------------------------------------------ time
    def step(self) -> None:
        """Advance one tick: commands due, workloads, GPU physics, facility power, breakers."""
        self._apply_due()
        wl = self.workloads
        job_activity, job_alpha, job_mem = wl.demand(self.now_s, self.job_speed)
        gpu_job = wl.gpu_job
        dark = not self._all_powered
        activity = job_activity[gpu_job] * self.powered if dark else job_activity[gpu_job]
        self.activity = activity
        step_gpus(
            self.gpu,
            self.consts,
            self.params,
            activity=activity,
            alpha=job_alpha[gpu_job],
            cap_w=self.cap_w,
            clock_ceiling_mhz=self.clock_max_mhz,
            powered=self.powered,
            dt_s=self.tick_s,
        )
        job_util = np.minimum(job_activity / 0.97, 1.0)
        self.util = job_util[gpu_job] * self.powered if dark else job_util[gpu_job]
        self.mem_util = job_mem[gpu_job] * self.powered if dark else job_mem[gpu_job]
        clock = self.gpu.clock_frac * self.powered if dark else self.gpu.clock_frac
        self.job_speed = wl.job_speed(clock)
        # Servers' draw through their PSUs, summed straight into racks (the loss is linear).
        gpu_w = _sum_by(self._gpu_rack, self.gpu.power_w, self.topology.n_racks)
        non_gpu_w = self._rack_non_gpu_w(self.gpu.power_w)
        rack_w = (gpu_w + non_gpu_w) / self.params.psu_efficiency
        rack_w += self._rack_overhead_on_w
        self.rack_power_w = rack_w
        self.site_power_w = float(rack_w.sum())
        if self.enforce_breakers:
            new = self.breakers.step(rack_w, self.now_s, self.tick_s)
            if new.any():
                self._trip(new)
        self._remember()
        self.now_s += self.tick_s
        self.tick += 1

    def rack_demand_w(self) -> FloatArray:
        """What each rack would draw this tick with every GPU uncapped at its present activity.

        A capped synchronous job spends more of each step computing, and a capped service builds
        a backlog, so this is the controlled run's own demand, not an uncapped run's. Units: W.
        """
        full_w = self.consts.idle_w + self.consts.span_w * self.activity
        if not self._all_powered:
            full_w = full_w * self.powered
        gpu_w = _sum_by(self._gpu_rack, full_w, self.topology.n_racks)
        rack_w = (gpu_w + self._rack_non_gpu_w(full_w)) / self.params.psu_efficiency
        rack_w += self._rack_overhead_on_w
        return rack_w

    def undrawn_w(self) -> FloatArray:
        """Power the caps in force allow and the site does not draw, by where it lies. Units: W
        (wall side, as site power is metered).

        In `UNDRAWN_PARTS` order: under the caps of synchronous jobs' GPUs that would draw less
        than their cap uncapped (communication phases, checkpoints), of services' GPUs
        (between bursts), of GPUs with no job (idle at their min caps); and servers' non-GPU
        power below its peak, the figure a controller budgets. A GPU its cap holds back draws
        about its cap, so it adds nothing here: what the steady gap counts and these parts do
        not is power the caps never handed out (bench.control's `steady_gap_parts_pct`).
        """
        consts = self.consts
        full_w = consts.idle_w + consts.span_w * self.activity
        under = np.where(full_w < self.cap_w, np.maximum(self.cap_w - self.gpu.power_w, 0.0), 0.0)
        if not self._all_powered:
            under *= self.powered
        wl = self.workloads
        idle = wl.gpu_job == wl.n_jobs - 1
        sync = wl.sync_job() >= 0
        parts = np.array(
            [
                float(under[sync].sum()),
                float(under[~sync & ~idle].sum()),
                float(under[idle].sum()),
                # A dark server's span is 0: it draws nothing and nothing is budgeted for it.
                float(self._server_span_w @ (1.0 - self._server_load(self.gpu.power_w))),
            ]
        )
        return parts / self.params.psu_efficiency

    def _rack_non_gpu_w(self, gpu_power_w: FloatArray) -> FloatArray:
        """Servers' non-GPU power per rack at the load these GPU draws put on them. Units: W."""
        server_w = self.server_non_gpu_w(gpu_power_w)
        return _sum_by(self._rack_of_server, server_w, self.topology.n_racks)

    def server_non_gpu_w(self, gpu_power_w: FloatArray | None = None) -> FloatArray:
        """Each server's non-GPU power at these GPU draws (now's by default; 0 on a tripped
        rack). Load is the servers' mean (power - idle) / (max cap - idle). Units: W (DC side)."""
        power = self.gpu.power_w if gpu_power_w is None else gpu_power_w
        return self._server_fixed_w + self._server_span_w * self._server_load(power)

    def _server_load(self, gpu_power_w: FloatArray) -> FloatArray:
        """Each server's load: its GPUs' mean (power - idle) / (max cap - idle), in [0, 1]."""
        load = np.clip((gpu_power_w - self.consts.idle_w) / self.consts.span_w, 0.0, 1.0)
        return _sum_by(self._gpu_server, load, self._n_servers) / self._server_gpus

    def run_boot(self, *, seconds: float) -> None:
        """Step the physics for `seconds` before time zero, then restart the clock at zero.

        A cluster is built at full clocks; a live run (the demo) that starts its clock at once
        would count the limiters' first settling onto the boot caps as an overshoot of real load.
        """
        start = self.now_s
        for _ in range(max(1, round(seconds / self.tick_s))):
            self.step()
        self.now_s = start

    def _trip(self, new: NDArray[np.bool_]) -> None:
        ids = self.topology.racks.ids
        for r in np.flatnonzero(new):
            self.trips.append((self.now_s, ids[r]))
            log.error(
                "BREAKER TRIPPED: rack power cut",
                rack=ids[r],
                t_s=self.now_s,
                rack_power_w=float(self.rack_power_w[r]),
                rating_w=float(self.breakers.rating_w[r]),
            )
        self.powered = ~self.breakers.tripped[self._gpu_rack]
        self._all_powered = False
        self.workloads.set_powered(self.powered)
        server_dark = self.breakers.tripped[self._server_rack_of_server()]
        self._server_overhead_on_w = np.where(server_dark, 0.0, self._server_overhead_w)
        self._sum_overheads()

    def _sum_overheads(self) -> None:
        """Non-GPU power per rack, from servers and the rack itself, zero on tripped racks."""
        rack_of_server = self._server_rack_of_server()
        self._rack_server_overhead_on_w = _sum_by(
            rack_of_server, self._server_overhead_on_w, self.topology.n_racks
        )
        self._server_fixed_w = self._server_overhead_on_w * self._server_idle_frac
        self._server_span_w = self._server_overhead_on_w - self._server_fixed_w
        self._rack_overhead_on_w = np.where(
            self.breakers.tripped, 0.0, self.topology.racks.overhead_w
        )

    def _server_rack_of_server(self) -> NDArray[np.int32]:
        group = self._server_rack
        for level in self._rack_parent_levels:
            group = level.parent[group]
        return group

    # ------------------------------------------------------------------ sensing
    def _remember(self) -> None:
        noise = self._noise[self.tick % _NOISE_ROWS]
        reading = Reading(
            now_s=self.now_s,
            power_w=self.gpu.power_w * noise,
            sm_clock_mhz=self.gpu.clock_frac * self.consts.max_clock_mhz * self.powered
            if not self._all_powered
            else self.gpu.clock_frac * self.consts.max_clock_mhz,
            util=self.util,
            mem_util=self.mem_util,
            temp_c=self.gpu.temp_c.copy(),
            cap_w=self.cap_w,
            rack_power_w=self.rack_power_w,
        )
        self._history.append(reading)
        if len(self._history) > self._delay_ticks + 1:
            del self._history[0]

    def reading(self) -> Reading:
        """The sensors' view, `telemetry_delay_s` old (the oldest reading kept)."""
        if not self._history:
            self._remember()
        return self._history[0]

    def fill_fleet(
        self, fleet: FleetState, *, fresh_racks: NDArray[np.bool_] | None = None
    ) -> None:
        """Write the delayed, noisy reading into a FleetState as ingest would (all racks at once).

        Racks with `fresh_racks` False (telemetry lost) keep their old rows and last-seen time.
        """
        r = self.reading()
        class_code = self._class_code
        if fresh_racks is None:
            rows: slice | NDArray[np.bool_] = slice(None)
            racks: slice | NDArray[np.bool_] = slice(None)
        else:
            rows = fresh_racks[self._gpu_rack]
            racks = fresh_racks
        fleet.power_w[rows] = r.power_w[rows]
        fleet.sm_clock_mhz[rows] = r.sm_clock_mhz[rows]
        fleet.util[rows] = r.util[rows]
        fleet.mem_util[rows] = r.mem_util[rows]
        fleet.temp_c[rows] = r.temp_c[rows]
        fleet.cap_w[rows] = r.cap_w[rows]
        fleet.workload_class[rows] = class_code[rows]
        fleet.rack_power_w[racks] = r.rack_power_w[racks]
        fleet.rack_last_seen_s[racks] = r.now_s
        fleet.rack_seq[racks] += 1


def _sum_by(group: NDArray[np.int32], weights: FloatArray, n: int) -> FloatArray:
    """Per-group sums of a per-member quantity (one `np.bincount`)."""
    return np.bincount(group, weights=weights, minlength=n).astype(np.float64, copy=False)
