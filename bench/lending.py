"""`rheostat bench lending`: headroom lending's effect, both ways, and what it costs a decision.

Each scenario runs in the closed loop under `rheostat` and `rheostat+lend` (`policies.lending`,
contract tolerance `--lend-tolerance`), scored as `rheostat bench control` scores them: steady
gap, weighted work against the oracle's, seconds over breakers and over the site limit, trips.
Then the decision's warm time with lending off and on, on the generated fleet of
`rheostat bench decide`, alternating the two so a neighbour's burst on a shared machine falls on
both; the ratio is the figure to read, not the milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from bench import control
from bench.decide import make_fleet
from policies.decision import DecisionState, Limits, PolicySettings
from policies.pipeline import decide
from policies.tiers import N_TIERS
from policies.topology import generate_topology
from simulator.scenario import load_scenario

NAME = "lending"
HELP = "headroom lending on and off: steady gap, oracle ratio, seconds over, decision cost"
DEFAULT_ARGS = ["--duration", "600"]
SCENARIOS = ("budget-step", "phoenix", "inference-trace", "gb200-nvl72", "steady")

Row = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", nargs="*", default=list(SCENARIOS), metavar="NAME")
    parser.add_argument(
        "--duration", type=float, metavar="S", help="cut scenarios to S seconds (default: full)"
    )
    parser.add_argument("--lend-tolerance", type=float, default=control.LEND_TOLERANCE)
    parser.add_argument("--gpus", type=int, default=100_000, help="fleet size for decision time")
    parser.add_argument("--repeat", type=int, default=15, help="timed decisions each way")


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for name in args.scenario:
        scenario = load_scenario(name)
        if args.duration is not None and args.duration < scenario.duration_s:
            scenario = scenario.shortened(args.duration)
        runs = control.run_scenario(
            scenario, ["rheostat", control.LEND], lend_tolerance=args.lend_tolerance
        )
        for controller, summary in runs.items():
            board = summary["scoreboard"]
            rows.append(
                {
                    "scenario": name,
                    "controller": controller,
                    "gap_%": board["steady_gap_pct"],
                    "oracle": (summary.get("oracle_ratio") or {}).get("weighted"),
                    "weighted": summary["throughput_retained"].get("weighted"),
                    "trips": summary["breaker_trips"],
                    "brk_over_s": board["breaker_over_s"],
                    "site_over_s": board["site_over_s"],
                    "overshoot_%": summary["max_overshoot_pct"],
                }
            )
    if args.gpus > 0:
        rows.append(decide_cost(args.gpus, args.repeat, args.lend_tolerance))
    return rows


def decide_cost(n: int, repeat: int, tolerance: float) -> Row:
    """Median warm decision time with lending off and on, and their ratio. Units: ms."""
    rng = np.random.default_rng(1)
    topology = generate_topology(n)
    tier = rng.integers(0, N_TIERS, n).astype(np.int8)
    fleets = [make_fleet(topology, rng, 0.0) for _ in range(3)]
    ways = {"off": PolicySettings(), "on": control.lend_settings(tolerance)}
    states: dict[str, DecisionState | None] = dict.fromkeys(ways)
    times: dict[str, list[float]] = {way: [] for way in ways}
    limits = Limits()
    for i in range(repeat + 2):  # two untimed ticks: the cold one, and the first lending one
        for way, settings in ways.items():
            began = time.perf_counter()
            _, states[way] = decide(
                topology,
                fleets[i % 3],
                tier=tier,
                limits=limits,
                settings=settings,
                state=states[way],
                now_s=float(i),
            )
            if i >= 2:
                times[way].append(time.perf_counter() - began)
    off, on = (statistics.median(times[w]) * 1e3 for w in ("off", "on"))
    caps = {w: float(s.cap_w.sum()) for w, s in states.items() if s is not None}
    return {
        "scenario": f"decide {n} GPUs",
        "controller": "warm ms off/on",
        "decide_off_ms": round(off, 3),
        "decide_on_ms": round(on, 3),
        "lend_cost_ratio": round(on / off, 3),
        #: Lent in the last tick, as a share of the caps without lending: lending did happen.
        "lent_%": round((caps["on"] / caps["off"] - 1.0) * 100.0, 3),
    }
