"""`rheostat bench decide`: cold and warm decision time, HiGHS's time, state size, agreement.

The fleet is `generate_topology(N)` (8 GPUs a server, 4 servers a rack, 20 racks a row, mixed
H100/A100) with four Flex tiers, busy enough that the site and some rows and racks bind. A cold
decision has no previous state (it builds the topology plan); a warm one reuses the last tick's
state and the caller's workspace while telemetry moves. Both include demand, capping,
anti-chatter and DVFS. Bytes per GPU count the state and the workspace a warm tick keeps. HiGHS
solves the single weighted LP of the same instance; the reference (`policies.reference`) checks
the vectorized allocation. Both are skipped above `--exact-max` GPUs, where they take minutes.
HiGHS's figure is the median of `--highs-repeat` solves.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from typing import Any

import numpy as np

from bench._highs import solve_weighted_lp
from policies.capping import allocate
from policies.decision import Limits, PolicySettings
from policies.demand import estimate_demand
from policies.fleet import FleetState
from policies.pipeline import decide
from policies.plan import CappingPlan
from policies.reference import allocate_reference
from policies.tiers import N_TIERS
from policies.topology import Topology, generate_topology
from policies.workspace import DecisionWorkspace

NAME = "decide"
HELP = "time cold and warm decisions against HiGHS on a generated fleet"
DEFAULT_ARGS = ["--gpus", "10000", "100000", "1000000"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpus",
        type=int,
        nargs="+",
        default=[100_000],
        metavar="N",
        help="fleet sizes (multiples of 8)",
    )
    parser.add_argument("--repeat", type=int, default=15, help="timed decisions per figure")
    parser.add_argument(
        "--highs-repeat", type=int, default=3, help="timed HiGHS solves (their median counts)"
    )
    parser.add_argument(
        "--exact-max",
        type=int,
        default=100_000,
        help="largest fleet on which HiGHS and the reference run",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sync-jobs",
        type=int,
        default=0,
        metavar="SIZE",
        help="put every GPU in a synchronous job of SIZE consecutive GPUs (0: no jobs)",
    )


def make_fleet(topology: Topology, rng: np.random.Generator, now_s: float) -> FleetState:
    """Busy telemetry: most GPUs near their cap, some idle, a share memory-bound (decode)."""
    n = topology.n_gpus
    fleet = FleetState.empty(topology)
    busy = rng.random(n) < 0.85
    fleet.power_w = topology.gpu_max_cap_w * np.where(busy, rng.uniform(0.6, 1.0, n), 0.12)
    fleet.util = np.where(busy, rng.uniform(0.5, 1.0, n), 0.0)
    decode = rng.random(n) < 0.25
    fleet.util = np.where(decode, 0.2, fleet.util)
    fleet.mem_util = np.where(decode, 0.8, rng.uniform(0.1, 0.5, n))
    fleet.rack_last_seen_s[:] = now_s
    return fleet


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [_one(n, args) for n in args.gpus]


def _one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    topology = generate_topology(n)
    tier = rng.integers(0, N_TIERS, n).astype(np.int8)
    fleets = [make_fleet(topology, rng, 0.0) for _ in range(3)]
    settings = PolicySettings()
    limits = Limits()
    sync_job = (np.arange(n) // args.sync_jobs).astype(np.int32) if args.sync_jobs > 0 else None

    cold = []
    for i in range(args.repeat):
        began = time.perf_counter()
        _, state = decide(
            topology,
            fleets[i % 3],
            tier=tier,
            limits=limits,
            settings=settings,
            state=None,
            now_s=0.0,
            sync_job=sync_job,
        )
        cold.append(time.perf_counter() - began)
    # Warm ticks lend the decision core the caller's workspace, as the daemon does.
    workspace = DecisionWorkspace(n)
    warm = []
    for i in range(args.repeat):
        began = time.perf_counter()
        _, state = decide(
            topology,
            fleets[i % 3],
            tier=tier,
            limits=limits,
            settings=settings,
            state=state,
            now_s=1.0 + i,
            sync_job=sync_job,
            workspace=workspace,
        )
        warm.append(time.perf_counter() - began)
    warm_ms = statistics.median(warm) * 1e3

    highs_ms: float | None = None
    max_rel_diff: float | None = None
    if n <= args.exact_max:
        lo, hi = topology.gpu_min_cap_w, topology.gpu_max_cap_w
        demand = estimate_demand(CappingPlan.build(topology), fleets[0], lo, hi, settings.capping)
        inputs: dict[str, Any] = {
            "floor_w": lo,
            "demand_w": demand,
            "max_w": hi,
            "tier": tier,
            "usable_w": tuple(lv.usable_w for lv in topology.levels),
        }
        fast = allocate(CappingPlan.build(topology), **inputs)
        reference, _ = allocate_reference(topology, **inputs)
        max_rel_diff = float(np.max(np.abs(fast.cap_w - reference) / reference))
        if importlib.util.find_spec("highspy") is not None:  # a development dependency
            # A median, like the decision figures: one solve on a shared machine is as likely
            # to catch a neighbour's burst as not.
            solves = [solve_weighted_lp(topology, **inputs)[1] for _ in range(args.highs_repeat)]
            highs_ms = statistics.median(solves) * 1e3
    return {
        "gpus": n,
        "cold_ms": round(statistics.median(cold) * 1e3, 3),
        "warm_ms": round(warm_ms, 3),
        "highs_ms": None if highs_ms is None else round(highs_ms, 1),
        "speedup_vs_highs": None if highs_ms is None else round(highs_ms / warm_ms, 1),
        "max_rel_diff": max_rel_diff,
        "bytes_per_gpu": round((state.nbytes + workspace.nbytes) / n, 1),
    }
