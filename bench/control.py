"""`rheostat bench control`: the control-quality scoreboard.

Every shipped scenario runs in the closed loop under four controllers, measured the same way:
`none` (uncapped), `static` (one derating that fits the worst case), `threshold` (Slurm power-
plugin style, `simulator.baselines`), `rheostat`, and `rheostat+lend` (the same with headroom
lending on, `policies.lending`, its contract tolerance `--lend-tolerance`). Each run's summary is
the one `rheostat simulate --json` prints, against one unlimited reference run per scenario, plus
a `scoreboard` object with the figures the targets need that the summary does not carry:

- `breaker_over_s`: seconds summed over the breaker levels (every topology level below the site)
  over their usable limits; `site_over_s` the same for the site limit (contract, step or DR), and
  at the facility meter when the scenario has one (the contract is metered there, cooling
  included), whichever is longer; `ramp_over_s` seconds steeper than the ramp-rate limit.
- `within_limits`: no trip, the ramp limit kept, the site over its limit no longer than
  `site_over_allowed_s` and breaker levels over theirs no longer than `breaker_over_allowed_s`.
  A controller learns of a limit change only when a real one would (`simulator.grid`): an
  announced change (a contract step whose `notice_s`, or a DR event whose notification, comes at
  least a decision period and an actuation lag ahead) allows 0 s over; an unannounced one
  (a step without enough notice, a zero-notice DR event, a failed feed) allows
  `MAX_UNANNOUNCED_TICKS` decision periods, the time caps need to land. Throughput is only
  compared against rivals that stay within the limits: power taken over a limit is not a win, so
  a rival that takes it is still shown (its seconds over in the table) but marked `over limits,
  not compared`; Rheostat's own excesses are misses (`site-over`, `ramp-over`).
- `to_cap_ticks`: per limit step, decision periods until site power was under the new limit;
  `step_announced` says which steps were announced (target 0 periods) and which not (target at
  most `MAX_UNANNOUNCED_TICKS`).
- `steady_gap_pct`: mean of (attainable - site power) / attainable over the samples where demand
  exceeds what the limits allow by `DEMAND_MARGIN_FRAC`, at least `SETTLE_S` after the limit last
  moved. Demand is the controlled run's own: per rack, what it would draw this tick with every GPU
  uncapped at its present activity (`SimCluster.rack_demand_w`), so a synchronous job's
  communication phase, which no cap can fill, is not counted as power left unused. Attainable is
  min(site limit, sum over racks of min(rack demand, rack usable limit)); intermediate rows are
  not counted, since no shipped scenario binds on them. Positive: power left unused; negative:
  over. `steady_gap_vs_uncapped_pct` is the same against the uncapped reference run's rack power,
  sample by sample, which also counts the two runs' drifting training phases.
  `steady_gap_parts_pct` splits the gap by where the unused power lies, over the steady samples
  where the site limit binds (`site_bound`: their share; `gap`: their mean gap): `sync`,
  `service`, `idle`, under the caps of GPUs that would draw less than their cap uncapped (a
  synchronous job's communication phases, a service between bursts, a GPU with no job at its
  min cap); `non_gpu`, servers' non-GPU power below the peak the caps are budgeted against; and
  `rest`, the caps' budget not handed out (margins, caps still landing), negative where lending
  handed out more than the limit. The parts sum to `gap`.
Scenarios with a carbon policy are the exception: their Flex 2-3 jobs owe a daily amount of work
and Rheostat stops them once it is done, so their work against the uncapped run is the target by
design; there the throughput comparison is replaced by every work target being met
(`work-target` otherwise).

The table also shows `oracle` (weighted work against the oracle's, `simulator.oracle`: the best
allocation with full knowledge of every GPU's true curve and demand, under the same limits and
floors; `oracle` in the targets column when Rheostat's is under `MIN_ORACLE_RATIO`), the same per
tier (`o0`-`o3`: the oracle trades tiers for the weighted sum, so these may exceed 1), and
`below_floor_s`, seconds each tier spent below its tolerance floor while the limits allowed
every floor.

`--json` prints `{"scenarios": {name: {controller: summary}}}`. The default runs each scenario
for its full duration; `--duration S` cuts every scenario to at most S seconds; `--faults` adds
each scenario again under `FAULTS` (rows `NAME+faults`), where the same targets apply.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench._control_targets import (
    LEND,
    MAX_STEADY_GAP_PCT,
    MAX_UNANNOUNCED_TICKS,
    MIN_ORACLE_RATIO,
    MIN_TIER0,
    OVERSUBSCRIBED_MARGIN,
    Row,
    compared,
    flat_rows,
    misses,
    table,
)
from controller.commands._args import duration_s
from policies.decision import CappingSettings, LendSettings, NonGpuSettings, PolicySettings
from simulator import loop
from simulator.baselines import ThresholdController
from simulator.cluster import UNDRAWN_PARTS, SimCluster
from simulator.controllers import Controller, controller_topology
from simulator.loop import RunResult
from simulator.scenario import Scenario, load_scenario, shipped_scenarios
from simulator.summary import summarize

FloatArray = NDArray[np.float64]

#: Re-exported: the targets and the table are part of the scoreboard's interface.
__all__ = [
    "CONTROLLERS",
    "DEFAULT_ARGS",
    "FAULTS",
    "HELP",
    "LEND",
    "LEND_TOLERANCE",
    "MAX_STEADY_GAP_PCT",
    "MAX_UNANNOUNCED_TICKS",
    "MIN_ORACLE_RATIO",
    "MIN_TIER0",
    "NAME",
    "OVERSUBSCRIBED_MARGIN",
    "Row",
    "add_arguments",
    "add_lend_classes",
    "announced_horizon_s",
    "compared",
    "flat_rows",
    "lend_classes",
    "lend_settings",
    "misses",
    "run",
    "run_scenario",
    "scoreboard",
    "steady_gap_pct",
    "steps_announced",
    "table",
    "threshold_factory",
    "unannounced_dr_events",
    "with_faults",
]

#: Default `--lend-tolerance`: how far the sum of caps may exceed the contract if every GPU
#: jumped to its cap at once.
LEND_TOLERANCE = 0.02

NAME = "control"
HELP = "control-quality scoreboard: every scenario under none, static, threshold, rheostat (+lend)"
DEFAULT_ARGS: list[str] = []
CONTROLLERS = ("none", "static", "threshold", "rheostat", LEND)
#: Seconds after a limit change before a sample counts as steady state.
SETTLE_S = 30.0
#: Demand must exceed the attainable power by this fraction for a sample to count as
#: "demand above the limit" (keeps samples where demand merely brushes the limit out).
DEMAND_MARGIN_FRAC = 0.01
#: `--faults`: a 60 s controller outage (twice the default command TTL: every rack falls back
#: to its safe caps, then obeys the restarted controller), a fifth of the commands lost, and
#: telemetry 2-5 s late and out of order, all through the run.
FAULTS: tuple[dict[str, Any], ...] = (
    {"duration_s": 60.0},
    {"kind": "command_loss", "fraction": 0.2},
    {"kind": "telemetry_delay", "delay_s": 2.0, "jitter_s": 3.0},
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario", nargs="+", metavar="NAME", help="scenarios to run (default: every shipped)"
    )
    parser.add_argument("--controller", nargs="+", choices=CONTROLLERS, default=list(CONTROLLERS))
    parser.add_argument(
        "--duration", type=duration_s, metavar="S", help="cut scenarios to S seconds (or 90s, 2m)"
    )
    parser.add_argument(
        "--lend-tolerance",
        type=float,
        default=LEND_TOLERANCE,
        metavar="FRAC",
        help=f"{LEND}: contract tolerance of the lent worst case (default {LEND_TOLERANCE})",
    )
    parser.add_argument(
        "--non-gpu",
        choices=("peak", "measured"),
        default="peak",
        help="rheostat controllers: budget servers' non-GPU power at its peak (the default "
        "policy) or as each rack's meter measures it (`capping.non_gpu.measured`)",
    )
    add_lend_classes(parser)
    parser.add_argument(
        "--faults",
        action="store_true",
        help="run each scenario under FAULTS too: a controller outage longer than the commands' "
        "TTL, lost commands, late and reordered telemetry (rows named SCENARIO+faults)",
    )


def add_lend_classes(parser: argparse.ArgumentParser) -> None:
    """`--lend-classes`: the workload classes whose GPUs lend in `rheostat+lend` rows."""
    parser.add_argument(
        "--lend-classes",
        nargs="+",
        metavar="CLASS",
        help=f"{LEND}: only GPUs of these workload classes lend (`capping.lend.lender_classes`; "
        "`idle`: GPUs no job holds); default every GPU",
    )


def lend_classes(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The `--lend-classes` given, None when absent (every GPU lends)."""
    given = getattr(args, "lend_classes", None)
    return None if given is None else tuple(given)


def threshold_factory(cluster: SimCluster) -> Controller:
    """The threshold baseline seeing the cluster through DC-side limits, as the others do."""
    return ThresholdController(controller_topology(cluster.topology, cluster.params.psu_efficiency))


def _controller(name: str) -> str | Callable[[SimCluster], Controller]:
    if name == LEND:
        return "rheostat"
    return threshold_factory if name == "threshold" else name


def lend_settings(
    tolerance: float = LEND_TOLERANCE,
    *,
    non_gpu_measured: bool = False,
    lender_classes: tuple[str, ...] | None = None,
) -> PolicySettings:
    """The default policy with headroom lending on, `tolerance` its contract tolerance,
    `lender_classes` the workload classes that lend (None: every GPU)."""
    lend = LendSettings(
        enabled=True, contract_tolerance_frac=tolerance, lender_classes=lender_classes
    )
    non_gpu = NonGpuSettings(measured=non_gpu_measured)
    return PolicySettings(capping=CappingSettings(lend=lend, non_gpu=non_gpu))


def _settings(
    name: str,
    tolerance: float,
    non_gpu_measured: bool,
    lender_classes: tuple[str, ...] | None = None,
) -> PolicySettings | None:
    """The policy a rheostat row runs (None: the default one)."""
    if name == LEND:
        return lend_settings(
            tolerance, non_gpu_measured=non_gpu_measured, lender_classes=lender_classes
        )
    if non_gpu_measured:
        return PolicySettings(capping=CappingSettings(non_gpu=NonGpuSettings(measured=True)))
    return None


def steady_gap_pct(controlled: RunResult, reference: RunResult | None = None) -> float | None:
    """Mean unused share of attainable site power while demand exceeds it (module doc); %.

    Demand is the controlled run's own (`Series.rack_demand_w`), or with `reference` the
    uncapped run's power, sample by sample.
    """
    steady = _steady(controlled, reference)
    if steady is None:
        return None
    mask, attainable_w, power_w = steady
    gap = (attainable_w[mask] - power_w[mask]) / attainable_w[mask]
    return round(float(np.mean(gap)) * 100.0, 3)


def steady_gap_parts_pct(controlled: RunResult) -> dict[str, float] | None:
    """`steady_gap_pct` split by where the unused power lies (module doc); % of attainable.

    Over the steady samples where the site limit is what binds (attainable = the limit): there
    the unused power is the caps' undrawn part, non-GPU power below its budgeted peak and the
    site budget the caps did not hand out, exactly. Where a rack's limit binds instead, a rack
    below its limit does not want what its caps leave, so a split would count it. `site_bound`
    is the share of steady samples used, `gap` their mean gap; the parts of
    `simulator.cluster.UNDRAWN_PARTS` and `rest` sum to it. None without such samples.
    """
    steady = _steady(controlled, None)
    if steady is None:
        return None
    mask, attainable_w, power_w = steady
    limit_w = np.asarray(controlled.series.site_limit_w[: mask.size])
    bound = mask & (attainable_w >= limit_w)
    if not bound.any():
        return None
    undrawn_w = np.asarray(controlled.series.undrawn_w[: mask.size])[bound]
    share = undrawn_w / attainable_w[bound, None]
    gap = float(np.mean((attainable_w[bound] - power_w[bound]) / attainable_w[bound])) * 100.0
    parts = {name: float(np.mean(share[:, k])) * 100.0 for k, name in enumerate(UNDRAWN_PARTS)}
    parts["rest"] = gap - sum(parts.values())
    head = {"site_bound": float(bound.sum() / mask.sum()), "gap": gap}
    return {name: round(value, 3) for name, value in (head | parts).items()}


def _steady(
    controlled: RunResult, reference: RunResult | None
) -> tuple[NDArray[np.bool_], FloatArray, FloatArray] | None:
    """The steady samples (module doc), attainable site power and site power per sample; None
    when there are none. Units: W."""
    ctl = controlled.series
    n = len(ctl.t_s)
    if reference is not None:
        n = min(n, len(reference.series.t_s))
    if n == 0:
        return None
    t_s = np.asarray(ctl.t_s[:n])
    limit_w = np.asarray(ctl.site_limit_w[:n])
    power_w = np.asarray(ctl.site_power_w[:n])
    demand = ctl.rack_demand_w if reference is None else reference.series.rack_power_w
    racks_w = np.asarray(demand[:n])
    rack_usable_w = controlled.cluster.topology.racks.usable_w
    attainable_w = np.minimum(limit_w, np.minimum(racks_w, rack_usable_w[None, :]).sum(axis=1))
    changed = np.flatnonzero(np.diff(limit_w) != 0.0) + 1
    since = np.full(n, -np.inf)
    since[changed] = t_s[changed]
    since = np.maximum.accumulate(since)
    wanted_w = racks_w.sum(axis=1)
    steady = (t_s - since >= SETTLE_S) & (wanted_w > attainable_w * (1.0 + DEMAND_MARGIN_FRAC))
    if not steady.any():
        return None
    return steady, attainable_w, power_w


def announced_horizon_s(scenario: Scenario) -> float:
    """Notice a limit change needs to be met on time: a decision period and the actuation lag."""
    return scenario.controller.period_s + scenario.physics.actuation_lag_s


def steps_announced(scenario: Scenario) -> list[bool]:
    """Per contract step (in time order), whether it was announced early enough to be met."""
    horizon = announced_horizon_s(scenario)
    steps = sorted(scenario.limits.steps, key=lambda s: s.at_s)
    return [step.notice_s >= horizon for step in steps]


def unannounced_dr_events(scenario: Scenario) -> int:
    """DR events that cut before the controller could have acted on their notification."""
    horizon = announced_horizon_s(scenario)
    count = 0
    for e in scenario.grid.dr_events:
        notified = max(0.0, e.start_s - max(e.notification_s, e.ramp_s))
        if max(e.start_s - e.ramp_s, notified) - notified < horizon:
            count += 1
    return count


def scoreboard(controlled: RunResult, reference: RunResult, summary: Row) -> Row:
    """The derived figures of one run (module doc)."""
    over: dict[str, float] = summary["seconds_over_limit"]
    levels = controlled.cluster.topology.levels
    scenario = controlled.scenario
    period_s = scenario.controller.period_s
    breaker_over_s = round(sum(over.get(lv.name, 0.0) for lv in levels[:-1]), 3)
    site_over_s = max(over.get(levels[-1].name, 0.0), over.get("facility", 0.0))
    ramp_over_s = float(summary.get("ramp_violation_s", 0.0))
    announced = steps_announced(scenario)
    unannounced = announced.count(False) + unannounced_dr_events(scenario)
    feeds = sum(1 for f in scenario.faults if f.kind == "feed_failure")
    site_allowance_s = unannounced * MAX_UNANNOUNCED_TICKS * period_s
    breaker_allowance_s = feeds * MAX_UNANNOUNCED_TICKS * period_s
    return {
        "breaker_over_s": breaker_over_s,
        "breaker_over_allowed_s": breaker_allowance_s,
        "site_over_s": site_over_s,
        "site_over_allowed_s": site_allowance_s,
        "ramp_over_s": ramp_over_s,
        "within_limits": (
            not summary["breaker_trips"]
            and breaker_over_s <= breaker_allowance_s + 1e-9
            and ramp_over_s == 0.0
            and site_over_s <= site_allowance_s + 1e-9
        ),
        "to_cap_ticks": [
            None if t is None else round(t / period_s, 2) for t in summary["time_to_cap_s"]
        ],
        "step_announced": announced,
        "steady_gap_pct": steady_gap_pct(controlled),
        "steady_gap_vs_uncapped_pct": steady_gap_pct(controlled, reference),
        "steady_gap_parts_pct": steady_gap_parts_pct(controlled),
    }


def run_scenario(
    scenario: Scenario,
    controllers: Sequence[str],
    lend_tolerance: float = LEND_TOLERANCE,
    *,
    non_gpu_measured: bool = False,
    lender_classes: tuple[str, ...] | None = None,
) -> dict[str, Row]:
    """Controller name -> summary (with `scoreboard`) for one scenario."""
    reference = loop.run(scenario, unlimited=True)
    out: dict[str, Row] = {}
    for name in controllers:
        settings = _settings(name, lend_tolerance, non_gpu_measured, lender_classes)
        controlled = loop.run(scenario, controller=_controller(name), settings=settings)
        summary = _plain(summarize(controlled, reference))
        summary["controller"] = name  # `rheostat+lend` runs the `rheostat` controller
        summary["scoreboard"] = scoreboard(controlled, reference, summary)
        out[name] = summary
    return out


def _plain(summary: Row) -> Row:
    """Numpy scalars (the summary's `carbon_kg` is one) as Python numbers, so JSON takes them."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in summary.items()}


def run(args: argparse.Namespace) -> list[Row]:
    names = args.scenario or shipped_scenarios()
    scenarios: dict[str, dict[str, Row]] = {}
    # The simulator logs each breaker trip; uncontrolled runs trip many. Those lines go to
    # stderr so stdout stays the table or the JSON document.
    with contextlib.redirect_stdout(sys.stderr):
        for name in names:
            scenario = load_scenario(name)
            if args.duration is not None and args.duration < scenario.duration_s:
                scenario = scenario.shortened(args.duration)
            faults = getattr(args, "faults", False)
            for each in [scenario, with_faults(scenario)] if faults else [scenario]:
                scenarios[each.name] = run_scenario(
                    each,
                    args.controller,
                    getattr(args, "lend_tolerance", LEND_TOLERANCE),
                    non_gpu_measured=getattr(args, "non_gpu", "peak") == "measured",
                    lender_classes=lend_classes(args),
                )
    return [{"scenarios": scenarios}]


def with_faults(scenario: Scenario) -> Scenario:
    """The scenario under `FAULTS`, the outage starting 30 % into the run, named `NAME+faults`."""
    outage = {"kind": "controller_outage", "at_s": 0.3 * scenario.duration_s}
    doc = scenario.model_dump()
    doc["name"] = f"{scenario.name}+faults"
    doc["faults"] = [*doc["faults"], outage | FAULTS[0], *FAULTS[1:]]
    return Scenario.model_validate(doc)
