"""The oracle over a run: solved at a stride of simulated time, summed into the summary's keys.

`simulator.oracle` solves one instant; this module samples a run with it (every 10 s of
simulated time, at most 400 samples) and keeps, per Flex tier, the controller's work and the
oracle's, and the seconds the tier spent below its floor while the limits allowed every floor.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.tiers import DEFAULT_FLEX_TOLERANCES, N_TIERS
from policies.topology import Topology, dc_side
from simulator.cluster import SimCluster
from simulator.oracle import ORACLE_WEIGHTS, Curves, OracleSolution, solve

FloatArray = NDArray[np.float64]

#: Speed below a floor by more than this counts as a floor violation (the policy's cube-law model
#: and the true two-piece curve differ by about this much near the top).
FLOOR_SLACK = 0.01


@dataclass(eq=False, kw_only=True)
class OracleLog:
    """What the oracle saw over a run: per-tier work of the controller and the oracle, and the
    seconds each tier spent below its floor while the limits allowed every floor. Work in
    GPU-seconds at the top-clock rate; times in s.
    """

    stride_s: float
    controller_work: FloatArray = field(default_factory=lambda: np.zeros(N_TIERS))
    oracle_work: FloatArray = field(default_factory=lambda: np.zeros(N_TIERS))
    below_floor_s: FloatArray = field(default_factory=lambda: np.zeros(N_TIERS))
    floors_allowed_s: float = 0.0
    solves: int = 0
    unsolved: int = 0

    def add(
        self,
        solution: OracleSolution,
        *,
        speed: FloatArray,
        tier: NDArray[np.int8],
        working: NDArray[np.bool_],
        tolerances: tuple[float, ...] = DEFAULT_FLEX_TOLERANCES,
    ) -> None:
        """Count one sample: the controller's GPUs ran at `speed` while the oracle's solved."""
        dt = self.stride_s
        self.solves += 1
        if not np.isfinite(solution.value):
            self.unsolved += 1
            return
        self.controller_work += dt * np.bincount(
            tier[working], weights=speed[working], minlength=N_TIERS
        )
        self.oracle_work += dt * solution.tier_rate
        if solution.floors_kept == N_TIERS:
            self.floors_allowed_s += dt
            floor = 1.0 - np.asarray(tolerances)[tier] - FLOOR_SLACK
            below = working & (speed < floor)
            self.below_floor_s += dt * (np.bincount(tier[below], minlength=N_TIERS) > 0)

    def summary(self, weights: tuple[float, ...] = ORACLE_WEIGHTS) -> dict[str, Any]:
        """`oracle_ratio` (per tier and weighted) and `seconds_below_floor` (per tier)."""
        ratio: dict[str, float | None] = {}
        for t in range(N_TIERS):
            o = float(self.oracle_work[t])
            ratio[f"tier{t}"] = round(float(self.controller_work[t]) / o, 4) if o > 0 else None
        w = np.asarray(weights)
        den = float(w @ self.oracle_work)
        ratio["weighted"] = round(float(w @ self.controller_work) / den, 4) if den > 0 else None
        return {
            "oracle_ratio": ratio,
            "seconds_below_floor": {
                f"tier{t}": round(float(self.below_floor_s[t]), 3) for t in range(N_TIERS)
            },
            "oracle": {
                "stride_s": self.stride_s,
                "samples": self.solves,
                "unsolved": self.unsolved,
                "floors_allowed_s": round(self.floors_allowed_s, 3),
            },
        }


#: Simulated time between two oracle solves, at least. Units: s.
ORACLE_STRIDE_S = 10.0
#: Most solves in one run: longer runs solve at a longer stride.
MAX_SOLVES = 400


@dataclass(eq=False, kw_only=True)
class OracleTracker:
    """Solves the oracle at a stride of a run's ticks and keeps its `OracleLog`."""

    topology: Topology
    every_ticks: int
    unit: NDArray[np.int64]
    tier: NDArray[np.int8]
    log: OracleLog

    @classmethod
    def create(cls, cluster: SimCluster, *, duration_s: float) -> OracleTracker:
        stride_s = max(ORACLE_STRIDE_S, duration_s / MAX_SOLVES)
        every = max(1, round(stride_s / cluster.tick_s))
        wl = cluster.workloads
        unit = cluster.topology.gpu_server.astype(np.int64) * wl.n_jobs + wl.gpu_job
        return cls(
            topology=dc_side(cluster.topology, cluster.params.psu_efficiency),
            every_ticks=every,
            unit=unit,
            tier=wl.gpu_tier(),
            log=OracleLog(stride_s=every * cluster.tick_s),
        )

    def observe(
        self,
        tick: int,
        cluster: SimCluster,
        site_dc_w: float,
        *,
        usable_w: list[FloatArray] | None = None,
    ) -> None:
        """At every `every_ticks`-th tick, solve for the cluster as it is and count the sample.

        `site_dc_w` is the site limit in force on the DC side (as the controller budgets it);
        `usable_w` the usable ratings per level on the DC side when a failed feed changed them
        (None: the topology's).
        """
        if tick % self.every_ticks:
            return
        consts = cluster.consts
        topo = self.topology
        n = topo.n_gpus
        curves = Curves(
            idle_w=consts.idle_w,
            span_w=consts.span_w,
            activity=cluster.activity,
            static_frac=consts.static_frac,
            knee=consts.knee,
            alpha=cluster.gpu.alpha,
            min_clock_frac=consts.min_clock_frac,
            min_cap_w=topo.gpu_min_cap_w,
        )
        wl = cluster.workloads
        working = cluster.powered & (wl.gpu_job != wl.n_jobs - 1) & (cluster.activity > 0.0)
        usable = [lv.usable_w for lv in topo.levels] if usable_w is None else list(usable_w)
        usable[-1] = np.minimum(usable[-1], site_dc_w)
        solution = solve(
            topo,
            curves,
            usable_w=tuple(usable),
            tier=self.tier,
            working=working & np.ones(n, dtype=np.bool_),
            unit=self.unit,
        )
        self.log.add(solution, speed=cluster.gpu.speed, tier=self.tier, working=working)


def oracle_available() -> bool:
    """Whether HiGHS is installed, so runs can carry the oracle's figures."""
    return importlib.util.find_spec("highspy") is not None


def oracle_keys(log: OracleLog | None) -> dict[str, Any]:
    """The summary's oracle keys; all None when the run had no oracle (no HiGHS, or unlimited)."""
    if log is None:
        return {"oracle_ratio": None, "seconds_below_floor": None, "oracle": None}
    return log.summary()
