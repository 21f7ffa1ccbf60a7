"""`rheostat bench simulate`: how much faster than real time the closed loop runs.

The target (issue 4) is a 24-hour, 10,000-GPU scenario at 1 s ticks in under 2 minutes, i.e.
at least 700x real time. The fleet is `bench_scenario(N)`: mixed H100/A100 servers with
training (tiers 1 and 3) and diurnal inference (tier 0) under a site contract at 80 % of full
draw, so the controller works every tick. By default a one-hour slice is timed and the realtime
factor reported (per-tick cost does not grow with duration); `--duration 86400` runs the day.
The wall time covers the whole loop: physics, telemetry, the controller and the metrics;
`controller_ms_per_tick` is the controller's share of it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller.commands._args import duration_s
from policies.decision import Limits, PolicySettings
from policies.fleet import FleetState
from simulator import loop
from simulator.cluster import SimCluster
from simulator.controllers import Actuation, Controller
from simulator.scenario import Scenario

NAME = "simulate"
HELP = "closed-loop realtime factor on a 10,000-GPU fleet (target >= 700x)"
DEFAULT_ARGS = ["--gpus", "10000", "--duration", "3600"]
TARGET_REALTIME_FACTOR = 700.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", type=int, nargs="+", default=[10_000], metavar="N")
    parser.add_argument(
        "--duration", type=duration_s, default=3600.0, metavar="S", help="simulated seconds"
    )
    parser.add_argument("--controller", nargs="+", default=["rheostat"], choices=loop.CONTROLLERS)
    parser.add_argument("--period", type=float, default=1.0, help="controller period (s)")


def bench_scenario(n_gpus: int, duration_s: float, period_s: float = 1.0) -> Scenario:
    """A busy mixed fleet of `n_gpus` (a multiple of 32) for timing."""
    train = n_gpus * 6 // 10 // 8 * 8
    infer = n_gpus * 24 // 100 // 8 * 8
    batch = n_gpus * 8 // 100 // 8 * 8
    return Scenario.model_validate(
        {
            "name": f"bench-{n_gpus}",
            "duration_s": duration_s,
            "seed": 7,
            "topology": {"gpus": n_gpus, "site_limit_frac": 0.8, "racks_per_row": 20},
            "controller": {"period_s": period_s, "warmup_s": 0},
            "workloads": [
                {"kind": "training", "name": "pretrain", "gpus": train, "tier": 1},
                {"kind": "inference", "name": "chat", "gpus": infer, "tier": 0},
                {"kind": "training", "name": "batch", "gpus": batch, "tier": 3, "iteration_s": 2},
            ],
        }
    )


class Timed:
    """A controller wrapped to measure the time its decisions take. Units: s."""

    def __init__(self, inner: Controller) -> None:
        self.inner = inner
        self.name = inner.name
        self.spent_s = 0.0

    def decide(
        self, fleet: FleetState, limits: Limits, now_s: float, stale_rack: NDArray[np.bool_]
    ) -> Actuation | None:
        began = time.perf_counter()
        try:
            return self.inner.decide(fleet, limits, now_s, stale_rack)
        finally:
            self.spent_s += time.perf_counter() - began


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in args.gpus:
        scenario = bench_scenario(n, args.duration, args.period)
        for name in args.controller:
            timed: list[Timed] = []

            def factory(
                cluster: SimCluster,
                name: str = name,
                sc: Scenario = scenario,
                out: list[Timed] = timed,
            ) -> Timed:
                out.append(Timed(loop.make_controller(name, cluster, PolicySettings(), sc)))
                return out[0]

            result = loop.run(scenario, controller=factory)
            ticks = scenario.duration_s / scenario.tick_s
            rows.append(
                {
                    "gpus": n,
                    "controller": name,
                    "period_s": args.period,
                    "simulated_s": scenario.duration_s,
                    "wall_s": round(result.wall_s, 2),
                    "ms_per_tick": round(result.wall_s / ticks * 1e3, 3),
                    "controller_ms_per_tick": round(timed[0].spent_s / ticks * 1e3, 3),
                    "realtime_factor": round(result.realtime_factor, 1),
                    "day_wall_s": round(86_400.0 / result.realtime_factor, 1),
                    "meets_700x": result.realtime_factor >= TARGET_REALTIME_FACTOR,
                    "breaker_trips": len(result.cluster.trips),
                }
            )
    return rows
