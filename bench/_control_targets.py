"""The scoreboard's targets and its table: what `rheostat bench control` counts as a miss.

`bench.control` runs the scenarios and derives each run's `scoreboard` figures; this module
judges them against the targets that module's doc describes and lays the verdicts out as the
printed table. Judging needs only the summaries (the `--json` document), not the runs, so it
stands apart from the code that runs them; `bench.control` re-exports it all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]

#: Rheostat with headroom lending (`policies.lending`): the scoreboard shows it both ways.
LEND = "rheostat+lend"
#: Decision periods an unannounced limit change may take to get under (an announced one: 0).
MAX_UNANNOUNCED_TICKS = 2.0
MAX_STEADY_GAP_PCT = 1.0
MIN_TIER0 = 0.995
#: Weighted work against the oracle's (`simulator.oracle`) the controller must deliver.
MIN_ORACLE_RATIO = 0.97
OVERSUBSCRIBED_MARGIN = 0.05


def misses(scenario: str, by_controller: dict[str, Row], ours_name: str = "rheostat") -> list[str]:
    """The targets Rheostat (or `ours_name`, a variant of it) misses in one scenario."""
    ours = by_controller.get(ours_name)
    if ours is None:
        return []
    board = ours["scoreboard"]
    found: list[str] = []
    if ours["breaker_trips"]:
        found.append("trips")
    if board["breaker_over_s"] > board.get("breaker_over_allowed_s", 0.0) + 1e-9:
        found.append("breaker-over")
    announced = board.get("step_announced") or [False] * len(board["to_cap_ticks"])
    if any(
        t is None or t > (0.0 if known else MAX_UNANNOUNCED_TICKS)
        for t, known in zip(board["to_cap_ticks"], announced, strict=True)
    ):
        found.append("to-cap")
    if board["site_over_s"] > board["site_over_allowed_s"] + 1e-9:
        found.append("site-over")
    if board["ramp_over_s"] > 0:
        found.append("ramp-over")
    gap = board["steady_gap_pct"]
    if gap is not None and not 0.0 <= gap <= MAX_STEADY_GAP_PCT:
        found.append("steady-gap")
    targets = ours.get("work_targets")
    if targets is not None:
        if not all(t.get("met") for t in targets):
            found.append("work-target")
    else:
        found.extend(_throughput_misses(scenario, ours, by_controller))
    if ours["throughput_retained"].get("tier0", 1.0) < MIN_TIER0:
        found.append("tier0")
    oracle = _oracle_weighted(ours)
    if oracle is not None and oracle < MIN_ORACLE_RATIO:
        found.append("oracle")
    return found


def _oracle_weighted(summary: Row) -> float | None:
    """The summary's weighted `oracle_ratio`, None without an oracle (no HiGHS)."""
    ratio = summary.get("oracle_ratio")
    return None if not ratio else ratio.get("weighted")


def _below_floor(summary: Row) -> str | None:
    """Seconds each tier spent below its floor while the limits allowed it, as 't0,t1,t2,t3'."""
    below = summary.get("seconds_below_floor")
    if not below:
        return None
    return _join([below.get(f"tier{t}") for t in range(4)])


def compared(summary: Row) -> bool:
    """Whether a rival's throughput counts against Rheostat's: only if it kept within the limits."""
    return bool(summary["scoreboard"]["within_limits"])


def _throughput_misses(scenario: str, ours: Row, by_controller: dict[str, Row]) -> list[str]:
    found: list[str] = []
    weighted = ours["throughput_retained"].get("weighted", 1.0)
    for rival in ("static", "threshold"):
        other = by_controller.get(rival)
        if (
            other is not None
            and compared(other)
            and weighted < other["throughput_retained"].get("weighted", 1.0)
        ):
            found.append(f"<{rival}")
    static = by_controller.get("static")
    if scenario == "oversubscribed" and static is not None and compared(static):
        floor = static["throughput_retained"].get("weighted", 1.0)
        if weighted < floor + OVERSUBSCRIBED_MARGIN:
            found.append("<static+5")
    return found


def _verdict(scenario: str, name: str, by_controller: dict[str, Row], missed: list[str]) -> str:
    """The table's last column: Rheostat's missed targets; a rival over the limits says so."""
    if name in ("rheostat", LEND):
        missed = misses(scenario, by_controller, name) if name == LEND else missed
        if missed:
            return " ".join(missed)
        return "ok (work targets met)" if "work_targets" in by_controller[name] else "ok"
    summary = by_controller[name]
    if name in ("static", "threshold") and not compared(summary):
        return "over limits, not compared"
    return ""


def flat_rows(rows: Sequence[Row]) -> list[Row]:
    """One flat row per scenario x controller, the columns of the printed table."""
    flat: list[Row] = []
    for row in rows:
        for scenario, by_controller in row["scenarios"].items():
            missed = misses(scenario, by_controller)
            for name, s in by_controller.items():
                board = s["scoreboard"]
                kept = s["throughput_retained"]
                dr = [e.get("compliance") for e in s["dr"] if e.get("compliance") is not None]
                flat.append(
                    {
                        "scenario": scenario,
                        "controller": name,
                        "trips": s["breaker_trips"],
                        "brk_over_s": board["breaker_over_s"],
                        "site_over_s": board["site_over_s"],
                        "ramp_over_s": board["ramp_over_s"],
                        "overshoot_%": s["max_overshoot_pct"],
                        "to_cap_ticks": _join(board["to_cap_ticks"]),
                        "gap_%": board["steady_gap_pct"],
                        **{f"t{t}": kept.get(f"tier{t}") for t in range(4)},
                        "weighted": kept.get("weighted"),
                        "oracle": _oracle_weighted(s),
                        **{
                            f"o{t}": (s.get("oracle_ratio") or {}).get(f"tier{t}") for t in range(4)
                        },
                        "below_floor_s": _below_floor(s),
                        "energy_kwh": s["energy_kwh"],
                        "dr_compl": min(dr) if dr else None,
                        "targets": _verdict(scenario, name, by_controller, missed),
                    }
                )
    return flat


def _join(values: Sequence[float | None]) -> str | None:
    if not values:
        return None
    return ",".join("-" if v is None else f"{v:g}" for v in values)


def table(rows: Sequence[Row]) -> str:
    """The scoreboard as one fixed-width table (the registry's layout over `flat_rows`)."""
    from bench._registry import format_table

    return format_table(flat_rows(rows))
