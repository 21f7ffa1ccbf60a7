"""`rheostat bench capacity`: how many more GPUs the same breakers and contract host.

The scenario grows in steps of `--step` (5 % by default) more GPUs (`simulator.grow`: new racks
spread over the existing rows, each with the base's breaker, row limits and the site contract
kept in watts, the new GPUs running more of the same work mix), and each grown site runs under
each controller against its own unlimited reference. A step is hosted when the run has

- no breaker trip and stays within every limit (`bench.control.scoreboard`'s `within_limits`:
  0 s over a breaker, the site over its limit no longer than its unannounced changes allow);
- Flex 0 work at least `MIN_TIER0` of the unlimited run's;
- every tier at its floor: its work at least its floor (1 - its tolerated slowdown) of the
  unlimited run's, and 0 s below its floor while the limits allowed every floor
  (`seconds_below_floor`, from the oracle; absent without HiGHS).

A controller's capacity is the largest step hosted before its first miss (None when the base
scenario already misses), in percent of the base's GPUs: the GPUs actually added, whole servers,
so a step adds at least its nominal share. Targets: Rheostat's capacity at least
`MIN_CAPACITY_PCT` and at least `MIN_VS_STATIC` times static derating's.

`--json` prints `{"scenarios": {name: {"gpus": N, "controllers": {controller: {"capacity_pct",
"extra_gpus", "stopped_by", "steps": [...]}}, "targets": {...}}}}`; each step carries the grown
GPU count, the misses and the figures they rest on.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

from bench.control import MIN_TIER0, _plain, scoreboard
from controller.commands._args import duration_s
from policies.decision import DEFAULT_FLEX_TOLERANCES
from simulator import loop
from simulator.build import build_topology, full_power_w, server_models
from simulator.grow import grow
from simulator.scenario import Scenario, load_scenario
from simulator.summary import summarize

NAME = "capacity"
HELP = "most extra GPUs the same breakers and contract host, static against rheostat"
DEFAULT_ARGS = ["--scenario", "oversubscribed", "steady", "phoenix", "gb200-nvl72"]
CONTROLLERS = ("static", "rheostat")
#: Target: Rheostat hosts at least this many more GPUs, in percent of the base's.
MIN_CAPACITY_PCT = 35.0
#: Target: and at least this multiple of what static derating hosts.
MIN_VS_STATIC = 1.5

Row = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario", nargs="+", metavar="NAME", default=["oversubscribed"], help="scenarios"
    )
    parser.add_argument("--controller", nargs="+", choices=CONTROLLERS, default=list(CONTROLLERS))
    parser.add_argument(
        "--step", type=float, default=0.05, help="growth step, a share of the base's GPUs"
    )
    parser.add_argument(
        "--max-extra", type=float, default=1.0, help="largest growth tried (share of GPUs)"
    )
    parser.add_argument(
        "--duration", type=duration_s, metavar="S", help="cut scenarios to S seconds (or 90s, 2m)"
    )


def step_misses(summary: Row) -> list[str]:
    """Why a grown site is not hosted under this run (empty: hosted); see the module doc."""
    found: list[str] = []
    board = summary["scoreboard"]
    if summary["breaker_trips"]:
        found.append(f"trips={summary['breaker_trips']}")
    if not board["within_limits"]:
        found.append(f"over-limits(brk={board['breaker_over_s']}s,site={board['site_over_s']}s)")
    found.extend(work_misses(summary["throughput_retained"]))
    below = summary.get("seconds_below_floor") or {}
    found.extend(f"below-floor{t[-1]}={s:g}s" for t, s in below.items() if s > 0)
    return found


def oracle_retained(summary: Row) -> dict[str, float] | None:
    """Per tier, the oracle's work against the unlimited run's: the most any allocation keeps
    under the same limits (the run's retained work over its `oracle_ratio`)."""
    ratio = summary.get("oracle_ratio")
    if not ratio:
        return None
    kept: dict[str, float] = summary["throughput_retained"]
    return {
        t: round(kept[t] / ratio[t], 4)
        for t in kept
        if t.startswith("tier") and ratio.get(t) and ratio[t] > 0
    }


def work_misses(kept: dict[str, float]) -> list[str]:
    """Tiers whose work (against the unlimited run's) is under `MIN_TIER0` (Flex 0) or under
    their floor, 1 - the tolerated slowdown (the others)."""
    found: list[str] = []
    tier0 = kept.get("tier0")
    if tier0 is not None and tier0 < MIN_TIER0:
        found.append(f"tier0={tier0:.4f}")
    for t, tolerance in enumerate(DEFAULT_FLEX_TOLERANCES):
        work = kept.get(f"tier{t}")
        if t > 0 and work is not None and work < 1.0 - tolerance:
            found.append(f"tier{t}={work:.4f}<floor")
    return found


def _step_row(grown: Scenario, base_gpus: int, summary: Row) -> Row:
    gpus = int(summary["gpus"])
    return {
        "scenario": grown.name,
        "gpus": gpus,
        "extra_pct": round(100.0 * (gpus - base_gpus) / base_gpus, 3),
        "misses": step_misses(summary),
        "breaker_trips": summary["breaker_trips"],
        "within_limits": summary["scoreboard"]["within_limits"],
        "throughput_retained": summary["throughput_retained"],
        "seconds_below_floor": summary.get("seconds_below_floor"),
        "oracle_ratio": summary.get("oracle_ratio"),
        "oracle_retained": oracle_retained(summary),
        "contract_gpus": contract_gpus(grown),
    }


def contract_gpus(scenario: Scenario) -> float:
    """GPUs the site contract covers flat out (every GPU at its max cap with its server's
    overhead and PSU losses, at the fleet's mean): the count a site provisioned for peak power
    would host, the base of POLCA-style oversubscription figures."""
    topo = build_topology(
        scenario.topology, scenario.physics.psu_efficiency, server_model=server_models(scenario)
    )
    full_w = full_power_w(topo, scenario.physics.psu_efficiency)
    return round(float(topo.levels[-1].limit_w[0]) / full_w * topo.n_gpus, 1)


def scan(base: Scenario, controllers: Sequence[str], *, step: float, max_extra: float) -> Row:
    """Grow `base` step by step until every controller has missed on work (or `max_extra`).

    Two capacities per controller: `capacity_pct` by every criterion of the module doc, and
    `work_capacity_pct` without the seconds below a floor (each tier's work at its floor on
    average, transient dips allowed), which shows how far a few seconds' dips decide the first.
    """
    base_gpus = base.topology.gpus
    results: dict[str, Row] = {
        c: {
            "capacity_pct": None,
            "extra_gpus": None,
            "stopped_by": None,
            "work_capacity_pct": None,
            "work_stopped_by": None,
            "oracle_capacity_pct": None,
            "steps": [],
        }
        for c in controllers
    }
    scanning = list(controllers)
    oracle_open = dict.fromkeys(controllers, True)
    k = 0
    while scanning and k * step <= max_extra + 1e-9:
        grown = grow(base, k * step)
        reference = loop.run(grown, unlimited=True)
        for name in list(scanning):
            controlled = loop.run(grown, controller=name)
            summary = _plain(summarize(controlled, reference))
            summary["scoreboard"] = scoreboard(controlled, reference, summary)
            row = _step_row(grown, base_gpus, summary)
            out = results[name]
            out["steps"].append(row)
            if out["stopped_by"] is None:
                if row["misses"]:
                    out["stopped_by"] = {"extra_pct": row["extra_pct"], "misses": row["misses"]}
                else:
                    out["capacity_pct"] = row["extra_pct"]
                    out["extra_gpus"] = row["gpus"] - base_gpus
            if oracle_open[name]:
                if row["oracle_retained"] and not work_misses(row["oracle_retained"]):
                    out["oracle_capacity_pct"] = row["extra_pct"]
                else:
                    oracle_open[name] = False
            on_work = [m for m in row["misses"] if not m.startswith("below-floor")]
            if on_work:
                out["work_stopped_by"] = {"extra_pct": row["extra_pct"], "misses": on_work}
                scanning.remove(name)
            else:
                out["work_capacity_pct"] = row["extra_pct"]
        k += 1
    return {"gpus": base_gpus, "controllers": results, "targets": targets(results)}


def targets(results: dict[str, Row]) -> Row:
    """Rheostat's capacity against `MIN_CAPACITY_PCT` and `MIN_VS_STATIC` times static's."""
    ours = results.get("rheostat", {}).get("capacity_pct")
    static = results.get("static", {}).get("capacity_pct")
    vs_static = None
    if ours is not None and static is not None:
        vs_static = None if static == 0 else round(ours / static, 3)
    return {
        "min_capacity_pct": MIN_CAPACITY_PCT,
        "min_vs_static": MIN_VS_STATIC,
        "capacity_met": ours is not None and ours >= MIN_CAPACITY_PCT,
        "vs_static": vs_static,
        "vs_static_met": (
            None
            if "static" not in results
            else ours is not None and ours >= MIN_VS_STATIC * (static or 0.0)
        ),
    }


def run(args: argparse.Namespace) -> list[Row]:
    scenarios: dict[str, Row] = {}
    # Breaker trips are logged on stdout by the simulator; stdout stays the table or the JSON.
    with contextlib.redirect_stdout(sys.stderr):
        for name in args.scenario:
            base = load_scenario(name)
            if args.duration is not None and args.duration < base.duration_s:
                base = base.shortened(args.duration)
            scenarios[base.name] = scan(
                base, args.controller, step=args.step, max_extra=args.max_extra
            )
    return [{"scenarios": scenarios}]


def flat_rows(rows: Sequence[Row]) -> list[Row]:
    """One row per scenario x controller: capacity and why the scan stopped."""
    flat: list[Row] = []
    for row in rows:
        for scenario, result in row["scenarios"].items():
            tgt = result["targets"]
            for name, out in result["controllers"].items():
                stop = out["stopped_by"]
                verdict = ""
                if name == "rheostat":
                    missed = [
                        *([] if tgt["capacity_met"] else [f"<+{MIN_CAPACITY_PCT:g}%"]),
                        *([] if tgt["vs_static_met"] in (True, None) else [f"<{MIN_VS_STATIC}x"]),
                    ]
                    verdict = " ".join(missed) or "ok"
                flat.append(
                    {
                        "scenario": scenario,
                        "controller": name,
                        "base_gpus": result["gpus"],
                        "capacity_%": out["capacity_pct"],
                        "vs_contract_%": _vs_contract(out),
                        "extra_gpus": out["extra_gpus"],
                        "vs_static": tgt["vs_static"] if name == "rheostat" else None,
                        "first_miss_%": None if stop is None else stop["extra_pct"],
                        "missed_by": None if stop is None else " ".join(stop["misses"]),
                        "work_capacity_%": out["work_capacity_pct"],
                        "oracle_capacity_%": out["oracle_capacity_pct"],
                        "work_missed_by": (
                            None
                            if out["work_stopped_by"] is None
                            else " ".join(out["work_stopped_by"]["misses"])
                        ),
                        "targets": verdict,
                    }
                )
    return flat


def _vs_contract(out: Row) -> float | None:
    """GPUs hosted at capacity over the contract's flat-out count, minus 1; %."""
    hosted = [s for s in out["steps"] if s["extra_pct"] == out["capacity_pct"]]
    if not hosted:
        return None
    step = hosted[-1]
    return round(100.0 * (float(step["gpus"]) / float(step["contract_gpus"]) - 1.0), 2)


def table(rows: Sequence[Row]) -> str:
    from bench._registry import format_table

    return format_table(flat_rows(rows))
