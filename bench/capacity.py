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

A controller's capacity is the largest step hosted up from the base before its first miss; when
the base already misses, the scan goes down (`simulator.grow` then removes servers, each class of
work by its share) to the first step hosted. Steps are in percent of the base's GPUs: whole
servers, at least the nominal share. Beside it, `vs_contract_pct` is the hosted fleet against the
GPUs the site contract covers flat out (`contract_gpus`), the base of oversubscription figures
such as POLCA's (+30 %) and the targets: Rheostat's at least `MIN_CAPACITY_PCT` and at least
`MIN_VS_STATIC` times static derating's. `work_capacity_pct` drops the seconds-below-floor
criterion (each tier at its floor on average, brief dips allowed), and `oracle_capacity_pct`
applies the work criteria to the oracle's work in the same runs: what any allocation could host.
`--controller rheostat+lend` scans Rheostat with headroom lending on as well (not by default:
it is opt-in in the policy), against the same targets (`targets_lend`); `--lend-classes idle`
lends only what GPUs no job holds leave undrawn (`capping.lend.lender_classes`).

`--json` prints `{"scenarios": {name: {"gpus", "contract_gpus", "controllers": {controller:
{"capacity_pct", "vs_contract_pct", "stopped_by", "work_capacity_pct", "oracle_capacity_pct",
"steps": [...]}}, "targets": {...}}}}`; each step carries the grown GPU count, the misses and
the figures they rest on.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bench._control_targets import LEND
from bench.control import (
    LEND_TOLERANCE,
    MIN_TIER0,
    _controller,
    _plain,
    _settings,
    add_lend_classes,
    lend_classes,
    scoreboard,
)
from controller.commands._args import duration_s
from policies.tiers import DEFAULT_FLEX_TOLERANCES
from simulator import loop
from simulator.build import build_topology, full_power_w, server_models
from simulator.grow import grow
from simulator.scenario import Scenario, load_scenario
from simulator.summary import summarize

NAME = "capacity"
HELP = "most extra GPUs the same breakers and contract host, static against rheostat"
DEFAULT_ARGS = ["--scenario", "steady", "oversubscribed"]
#: `rheostat+lend` is Rheostat with headroom lending on, as `rheostat bench control` runs it.
CONTROLLERS = ("static", "rheostat", LEND)
DEFAULT_CONTROLLERS = ("static", "rheostat")
#: Target: Rheostat hosts at least this many more GPUs, in percent of the base's.
MIN_CAPACITY_PCT = 35.0
#: Target: and at least this multiple of what static derating hosts.
MIN_VS_STATIC = 1.5
#: Smallest fleet tried when the base already misses: half the base's GPUs fewer.
MIN_EXTRA = -0.5

Row = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario", nargs="+", metavar="NAME", default=["oversubscribed"], help="scenarios"
    )
    parser.add_argument(
        "--controller", nargs="+", choices=CONTROLLERS, default=list(DEFAULT_CONTROLLERS)
    )
    parser.add_argument(
        "--step", type=float, default=0.05, help="growth step, a share of the base's GPUs"
    )
    parser.add_argument(
        "--max-extra", type=float, default=1.0, help="largest growth tried (share of GPUs)"
    )
    parser.add_argument(
        "--without-dr",
        action="store_true",
        help="leave the scenario's demand-response events out (a cut is a share of the baseline, "
        "so it scales with the fleet: no fleet size keeps every floor through a deep one)",
    )
    parser.add_argument(
        "--duration", type=duration_s, metavar="S", help="cut scenarios to S seconds (or 90s, 2m)"
    )
    add_lend_classes(parser)


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
    }


def scan(
    base: Scenario,
    controllers: Sequence[str],
    *,
    step: float,
    max_extra: float,
    min_extra: float = MIN_EXTRA,
    lender_classes: tuple[str, ...] | None = None,
) -> Row:
    """Each controller's capacities on `base`, grown (or shrunk) step by step.

    Up from the base while a controller meets the work criteria; down from it, when the base
    already misses, until it meets every criterion (or `min_extra`). Three figures per
    controller: `capacity_pct` by every criterion of the module doc; `work_capacity_pct`
    without the seconds below a floor (each tier at its floor on average, brief dips allowed);
    `oracle_capacity_pct`, the same work criteria met by the oracle's work in those runs (what
    any allocation could host; up from the base only, so a lower bound when the scan stopped
    first). Percentages of the base's GPUs; `vs_contract_pct` the same hosted fleet against the
    GPUs the contract covers flat out.
    """
    runs: dict[str, dict[int, Row]] = {c: {} for c in controllers}

    def evaluate(k: int, names: Sequence[str]) -> None:
        grown = grow(base, k * step)
        reference = loop.run(grown, unlimited=True)
        for name in names:
            controlled = loop.run(
                grown,
                controller=_controller(name),
                settings=_settings(
                    name, LEND_TOLERANCE, non_gpu_measured=False, lender_classes=lender_classes
                ),
            )
            summary = _plain(summarize(controlled, reference))
            summary["scoreboard"] = scoreboard(controlled, reference, summary)
            runs[name][k] = _step_row(grown, base.topology.gpus, summary)

    k, going = 0, list(controllers)
    while going and k * step <= max_extra + 1e-9:
        evaluate(k, going)
        going = [c for c in going if not _work_only(runs[c][k]["misses"])]
        k += 1
    k, going = -1, [c for c in controllers if runs[c][0]["misses"]]
    while going and k * step >= min_extra - 1e-9:
        evaluate(k, going)
        going = [c for c in going if runs[c][k]["misses"]]
        k -= 1
    contract = contract_gpus(base)
    results: dict[str, Row] = {}
    for name, by_k in runs.items():
        steps = [by_k[i] for i in sorted(by_k)]
        cap, stop = _capacity(by_k, lambda r: not r["misses"])
        work, work_stop = _capacity(by_k, lambda r: not _work_only(r["misses"]))
        oracle, _ = _capacity(
            by_k, lambda r: bool(r["oracle_retained"]) and not work_misses(r["oracle_retained"])
        )
        hosted = None if cap is None else by_k[cap]["gpus"]
        results[name] = {
            "capacity_pct": None if cap is None else by_k[cap]["extra_pct"],
            "extra_gpus": None if hosted is None else hosted - base.topology.gpus,
            "vs_contract_pct": None if hosted is None else _pct(hosted, contract),
            "stopped_by": None if stop is None else _stop(by_k[stop]),
            "work_capacity_pct": None if work is None else by_k[work]["extra_pct"],
            "work_vs_contract_pct": None if work is None else _pct(by_k[work]["gpus"], contract),
            "work_stopped_by": None if work_stop is None else _stop(by_k[work_stop]),
            "oracle_capacity_pct": None if oracle is None else by_k[oracle]["extra_pct"],
            "steps": steps,
        }
    return {
        "gpus": base.topology.gpus,
        "contract_gpus": contract,
        "controllers": results,
        "targets": targets(results),
        **({"targets_lend": targets(results, LEND)} if LEND in results else {}),
    }


def _work_only(misses: list[str]) -> list[str]:
    return [m for m in misses if not m.startswith("below-floor")]


def _pct(gpus: float, of: float) -> float:
    return round(100.0 * (gpus / of - 1.0), 2)


def _stop(row: Row) -> Row:
    return {"extra_pct": row["extra_pct"], "misses": row["misses"]}


def _capacity(by_k: dict[int, Row], ok: Callable[[Row], bool]) -> tuple[int | None, int | None]:
    """The step hosted (largest up from the base while hosted, else the first hosted below
    it) and the step that first missed above it (None: none scanned)."""
    if 0 not in by_k:
        return None, None
    if ok(by_k[0]):
        k = 0
        while k + 1 in by_k and ok(by_k[k + 1]):
            k += 1
        return k, (k + 1 if k + 1 in by_k else None)
    k = -1
    while k in by_k and not ok(by_k[k]):
        k -= 1
    return (k, k + 1) if k in by_k else (None, min(by_k))


def contract_gpus(scenario: Scenario) -> float:
    """GPUs the site contract covers flat out (every GPU at its max cap with its server's
    overhead and PSU losses, at the fleet's mean): the count a site provisioned for peak power
    would host, the base of POLCA-style oversubscription figures."""
    topo = build_topology(
        scenario.topology, scenario.physics.psu_efficiency, server_model=server_models(scenario)
    )
    full_w = full_power_w(topo, scenario.physics.psu_efficiency)
    return round(float(topo.levels[-1].limit_w[0]) / full_w * topo.n_gpus, 1)


def targets(results: dict[str, Row], name: str = "rheostat") -> Row:
    """Rheostat's hosted fleet (`name`: with lending, `LEND`) against the contract's flat-out
    count: at least `MIN_CAPACITY_PCT` more, and at least `MIN_VS_STATIC` times static
    derating's figure."""
    ours = results.get(name, {}).get("vs_contract_pct")
    static = results.get("static", {}).get("vs_contract_pct")
    vs_static = None
    if ours is not None and static is not None and static > 0:
        vs_static = round(ours / static, 3)
    return {
        "min_capacity_pct": MIN_CAPACITY_PCT,
        "min_vs_static": MIN_VS_STATIC,
        "capacity_met": ours is not None and ours >= MIN_CAPACITY_PCT,
        "vs_static": vs_static,
        "vs_static_met": (
            None
            if "static" not in results
            else ours is not None and ours >= MIN_VS_STATIC * max(static or 0.0, 0.0)
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
            if getattr(args, "without_dr", False):
                grid = base.grid.model_copy(update={"dr_events": ()})
                base = base.model_copy(update={"grid": grid, "name": f"{base.name}(no DR)"})
            scenarios[base.name] = scan(
                base,
                args.controller,
                step=args.step,
                max_extra=args.max_extra,
                lender_classes=lend_classes(args),
            )
    return [{"scenarios": scenarios}]


def flat_rows(rows: Sequence[Row]) -> list[Row]:
    """One row per scenario x controller: capacities and why the scan stopped."""
    flat: list[Row] = []
    for row in rows:
        for scenario, result in row["scenarios"].items():
            for name, out in result["controllers"].items():
                tgt = result["targets_lend"] if name == LEND else result["targets"]
                ours = name in ("rheostat", LEND)
                stop = out["stopped_by"]
                verdict = ""
                if ours:
                    missed = [
                        *([] if tgt["capacity_met"] else [f"<+{MIN_CAPACITY_PCT:g}%"]),
                        *([] if tgt["vs_static_met"] in (True, None) else [f"<{MIN_VS_STATIC}x"]),
                    ]
                    verdict = " ".join(missed) or "ok"
                work_stop = out["work_stopped_by"]
                flat.append(
                    {
                        "scenario": scenario,
                        "controller": name,
                        "gpus": result["gpus"],
                        "contract_gpus": result["contract_gpus"],
                        "capacity_%": out["capacity_pct"],
                        "vs_contract_%": out["vs_contract_pct"],
                        "vs_static": tgt["vs_static"] if ours else None,
                        "first_miss_%": None if stop is None else stop["extra_pct"],
                        "missed_by": None if stop is None else " ".join(stop["misses"]),
                        "work_cap_%": out["work_capacity_pct"],
                        "work_vs_contract_%": out["work_vs_contract_pct"],
                        "work_missed_by": (
                            None if work_stop is None else " ".join(_work_only(work_stop["misses"]))
                        ),
                        "oracle_cap_%": out["oracle_capacity_pct"],
                        "targets": verdict,
                    }
                )
    return flat


def table(rows: Sequence[Row]) -> str:
    from bench._registry import format_table

    return format_table(flat_rows(rows))
