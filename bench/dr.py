"""`rheostat bench dr`: the cost a demand-response event adds to each control tick.

Times `DrSession.step` (baseline lock, deepest of several overlapping events, the Flex check
with per-GPU floors) on fleets of N GPUs in four Flex tiers, and `event_report` over a 3-hour
event recorded at one sample a second. The step runs once per tick next to `decide`, so it must
stay a small fraction of the decision's time at the same fleet size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from policies.dr.events import DrEvent
from policies.dr.report import event_report
from policies.dr.session import DrSession, FlexInputs

NAME = "dr"
HELP = "time the per-tick demand-response step and an event report"
DEFAULT_ARGS = ["--gpus", "10000", "100000", "1000000"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", type=int, nargs="+", default=[100_000], metavar="N")
    parser.add_argument("--events", type=int, default=3, help="overlapping events in force")
    parser.add_argument("--repeat", type=int, default=15, help="timed steps per figure")
    parser.add_argument("--seed", type=int, default=1)


def _events(n: int, baseline_w: float) -> list[DrEvent]:
    return [
        DrEvent(
            event_id=f"ev{i}",
            source="bench",
            notified_s=0.0,
            start_s=600.0 + 60.0 * i,
            duration_s=10_800.0,
            ramp_s=30.0,
            recovery_s=300.0,
            reduction_frac=0.10 + 0.05 * i,
            baseline_w=baseline_w,
        )
        for i in range(n)
    ]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    for n in args.gpus:
        demand = rng.uniform(150.0, 700.0, n)
        flex = FlexInputs(
            demand_w=demand,
            tier=rng.integers(0, 4, n).astype(np.int8),
            min_cap_w=np.full(n, 200.0),
            overhead_w=0.4 * float(demand.sum()),
        )
        baseline = 1.4 * float(demand.sum())
        session = DrSession()
        for k in range(900):
            session.record(float(k), baseline)
        events = _events(args.events, baseline)
        times = []
        for k in range(args.repeat):
            t0 = time.perf_counter()
            tick = session.step(events, 1000.0 + k, flex)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "gpus": n,
                "events": args.events,
                "step_ms_median": statistics.median(times) * 1e3,
                "step_ms_max": max(times) * 1e3,
                "limit_kw": tick.limit_w / 1e3,
                "shortfall_kw": tick.shortfall_w / 1e3,
            }
        )
    t_s = np.arange(0.0, 12_000.0, 1.0)
    power = np.where((t_s >= 600) & (t_s < 11_400), 74_900.0, 100_000.0)
    work = np.ones((t_s.size, 4))
    event = _events(1, 100_000.0)[0]
    t0 = time.perf_counter()
    report = event_report(event, t_s, power, tier_work=work, tier_work_unconstrained=work)
    report_ms = (time.perf_counter() - t0) * 1e3
    for row in rows:
        row["report_3h_ms"] = report_ms
        row["report_compliance"] = report.compliance
    return rows
