"""The `threshold` baseline: power capping the way a batch scheduler's power plugin does it.

Slurm's power plugin (power.conf, `power/cray_aries`) balances node caps every `balance_interval`
with two thresholds and bounded steps: defaults `upper_threshold=95`, `lower_threshold=90` (%),
`decrease_rate=50`, `increase_rate=20` (% of the node's cap range per interval) every 30 s. Issue 8
asks for that rule against the limits: every GPU under a group drawing more than 95 % of its
usable limit loses a step of cap; a GPU whose every group is below 90 % gains one; in between
caps hold. It knows no tiers, no demand estimate and no clocks, which is what the scoreboard
compares Rheostat against.

The scoreboard runs it at the controller period (1 s in the shipped scenarios), not Slurm's 30 s,
so it sees the fleet as often as Rheostat does; the steps are scaled to keep Slurm's 5:2 ratio of
decrease to increase while staying small enough not to swing the fleet every second. A stale
rack's GPUs count at their max cap (the safety rule every controller here follows).

Limits arrive DC-side (`controller_topology`), so measured power is the DC-side sum of GPU
telemetry plus each group's non-GPU overhead, the same view the limits are in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.decision import Limits
from policies.fleet import FleetState
from policies.topology import Topology
from simulator.controllers import Actuation

FloatArray = NDArray[np.float64]
#: A clock ceiling above every GPU's top clock: the baseline never sets clocks. Units: MHz.
NO_CLOCK_CEILING_MHZ = 1e4


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdSettings:
    """Thresholds as fractions of a group's usable limit; steps as fractions of a GPU's cap range.

    Defaults: Slurm's thresholds (95 %, 90 %); steps of 5 % down and 2 % up per interval (Slurm's
    50 % / 20 % per 30 s interval, scaled down for a 1 s interval at the same 5:2 ratio).
    """

    upper_frac: float = 0.95
    lower_frac: float = 0.90
    decrease_frac: float = 0.05
    increase_frac: float = 0.02
    #: Seconds between balancing passes; decisions in between repeat the last caps.
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.lower_frac < self.upper_frac:
            raise ValueError("need 0 < lower_frac < upper_frac")
        if self.decrease_frac <= 0.0 or self.increase_frac <= 0.0 or self.interval_s <= 0.0:
            raise ValueError("steps and interval must be positive")


class ThresholdController:
    """Tier-blind two-threshold capping with bounded steps per interval (see the module doc)."""

    name = "threshold"

    def __init__(self, topology: Topology, settings: ThresholdSettings | None = None) -> None:
        self.topology = topology
        self.settings = settings or ThresholdSettings()
        self.cap_w = topology.gpu_max_cap_w.copy()
        self._span_w = topology.gpu_max_cap_w - topology.gpu_min_cap_w
        self._overhead_w = [topology.overhead_under(k) for k in range(len(topology.levels))]
        self._clocks = np.full(topology.n_gpus, NO_CLOCK_CEILING_MHZ)
        self._gpu_rack = topology.gpu_group[topology.rack_level]
        self._next_s = -np.inf

    def load_frac(
        self, fleet: FleetState, limits: Limits, stale_rack: NDArray[np.bool_]
    ) -> FloatArray:
        """Per GPU, the highest power-over-usable-limit ratio among the groups that contain it."""
        topo = self.topology
        power_w = np.where(stale_rack[self._gpu_rack], topo.gpu_max_cap_w, fleet.power_w)
        worst = np.zeros(topo.n_gpus)
        last = len(topo.levels) - 1
        for k, level in enumerate(topo.levels):  # a handful of levels, each vectorized over GPUs
            usable_w = level.usable_w
            if k == last and limits.site_limit_w is not None:
                usable_w = np.minimum(usable_w, limits.site_limit_w)
            if not np.isfinite(usable_w).any():
                continue
            group_w = topo.group_sum(k, power_w) + self._overhead_w[k]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(usable_w > 0, group_w / usable_w, np.inf)
            ratio = np.where(np.isfinite(usable_w), ratio, 0.0)
            np.maximum(worst, ratio[topo.gpu_group[k]], out=worst)
        return worst

    def decide(
        self,
        fleet: FleetState,
        limits: Limits,
        now_s: float,
        stale_rack: NDArray[np.bool_],
    ) -> Actuation | None:
        s = self.settings
        if now_s + 1e-9 < self._next_s:
            return self.cap_w, self._clocks
        self._next_s = now_s + s.interval_s
        load = self.load_frac(fleet, limits, stale_rack)
        step_w = np.where(
            load > s.upper_frac,
            -s.decrease_frac * self._span_w,
            np.where(load < s.lower_frac, s.increase_frac * self._span_w, 0.0),
        )
        topo = self.topology
        self.cap_w = np.clip(self.cap_w + step_w, topo.gpu_min_cap_w, topo.gpu_max_cap_w)
        return self.cap_w, self._clocks
