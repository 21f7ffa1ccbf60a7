"""The agent's `sim` backend: one server's GPUs inside a `SimCluster`, behind `GpuBackend`.

The node agent (`agent/`) runs the same loop over this backend as over NVML, so tests and the
demo exercise the real agent code. Readings come from the cluster's sensors (delayed and noisy);
caps and clock ceilings go through `SimCluster.command`, so they land after the actuation lag as
on real GPUs. With `step_cluster` the backend advances the cluster itself to the current
monotonic time on each read (a standalone node); otherwise whoever owns the cluster steps it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from agent.backend import FloatArray, GpuIdentity, GpuReading, clip_to_ranges
from policies.gpu_models import GPU_MODELS
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.scenario import Scenario
from simulator.workloads import CLASSES

#: At most this many cluster ticks per read when stepping a standalone cluster (bounded work).
MAX_STEPS_PER_READ = 10_000


class SimGpuBackend:
    """GPUs `first .. first + count - 1` of `cluster` (one server), as a node agent sees them."""

    name = "sim"

    def __init__(
        self,
        cluster: SimCluster,
        *,
        server: int,
        step_cluster: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        topo = cluster.topology
        rows = np.flatnonzero(topo.gpu_server == server)
        if rows.size == 0:
            raise ValueError(f"server {server} has no GPUs")
        self.cluster = cluster
        self.rows = slice(int(rows[0]), int(rows[-1]) + 1)
        self.hostname = topo.levels[0].ids[server]
        self.step_cluster = step_cluster
        self.clock = clock
        self._started = clock()
        self._sim0 = cluster.now_s
        n = rows.size
        models = topo.gpu_model[self.rows]
        consts = cluster.consts
        self._ident = GpuIdentity(
            index=tuple(range(n)),
            uuid=tuple(f"GPU-sim-{topo.site}-{self.hostname}-{i:02d}" for i in range(n)),
            pci_bus_id=tuple(f"00000000:{0x18 + 0x10 * i:02X}:00.0" for i in range(n)),
            name=tuple(GPU_MODELS[m].nvml_name for m in models),
            min_cap_w=topo.gpu_min_cap_w[self.rows].copy(),
            max_cap_w=topo.gpu_max_cap_w[self.rows].copy(),
            default_cap_w=cluster.cap_w[self.rows].copy(),
            min_sm_clock_mhz=consts.min_clock_frac[self.rows] * consts.max_clock_mhz[self.rows],
            max_sm_clock_mhz=consts.max_clock_mhz[self.rows].copy(),
        )
        self._energy_j = np.zeros(n)
        self._energy_at_s = cluster.now_s
        #: Every `apply` call in order (caps, clocks): what the GPUs were asked, for tests.
        self.applied: list[tuple[FloatArray, FloatArray]] = []

    @classmethod
    def standalone(cls, *, gpus: int = 8, a100: bool = False, seed: int = 1) -> SimGpuBackend:
        """One server of `gpus` GPUs running a training job, stepped on the wall clock."""
        scenario = Scenario.model_validate(
            {
                "name": "agent-sim",
                "duration_s": 86_400,
                "seed": seed,
                "topology": {
                    "gpus": gpus,
                    "gpus_per_server": gpus,
                    "a100_share": 1.0 if a100 else 0.0,
                },
                "workloads": [
                    {"kind": "training", "name": "train", "gpus": gpus, "iteration_s": 4.0}
                ],
            }
        )
        return cls(build_cluster(scenario, site="sim"), server=0, step_cluster=True)

    def identity(self) -> GpuIdentity:
        return self._ident

    def _advance(self) -> None:
        cluster = self.cluster
        target = self._sim0 + (self.clock() - self._started)
        for _ in range(MAX_STEPS_PER_READ):
            if cluster.now_s + cluster.tick_s > target:
                break
            cluster.step()

    def read(self) -> GpuReading:
        if self.step_cluster:
            self._advance()
        r = self.cluster.reading()
        rows = self.rows
        power = r.power_w[rows].copy()
        dt = max(r.now_s - self._energy_at_s, 0.0)
        self._energy_j += power * dt
        self._energy_at_s = max(r.now_s, self._energy_at_s)
        return GpuReading(
            power_w=power,
            power_instant_w=self.cluster.gpu.power_w[rows].copy(),
            energy_j=self._energy_j.copy(),
            sm_clock_mhz=r.sm_clock_mhz[rows].copy(),
            util=r.util[rows].copy(),
            mem_util=r.mem_util[rows].copy(),
            temp_c=r.temp_c[rows].copy(),
            cap_w=r.cap_w[rows].copy(),
            sm_clock_max_mhz=self.cluster.clock_max_mhz[rows].copy(),
        )

    def workload_classes(self) -> tuple[tuple[str, ...], NDArray[np.int64]]:
        """The simulated workloads' class of each GPU (a real node learns it from its jobs)."""
        return CLASSES, self.cluster.workloads.gpu_class()[self.rows].astype(np.int64)

    def apply(self, cap_w: FloatArray, sm_clock_max_mhz: FloatArray) -> None:
        caps, clocks = clip_to_ranges(self._ident, cap_w, sm_clock_max_mhz)
        self.applied.append((caps, clocks))
        self.cluster.command(caps, clocks, self.rows)

    def restore_defaults(self) -> None:
        self.apply(self._ident.default_cap_w, self._ident.max_sm_clock_mhz)

    def close(self) -> None:
        """Nothing to release: the cluster belongs to its owner."""
