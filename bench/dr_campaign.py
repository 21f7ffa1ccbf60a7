"""`rheostat bench dr-campaign`: a season of random grid events on a site of 72-GPU racks.

`--events N` events, drawn with `--seed S` (`simulator.dr_campaign`: cuts of 10-40 % of the
baseline, 0-15 minutes' notice, holds of 10 minutes to 10 hours), each run around its start on the
`gb200-nvl72` site (8 NVL72 racks, Flex 0-3 work, rack feeds and row limits) without its own
scripted event. Target: at least `MIN_ON_TIME_FRAC` of the events at their target within
`ON_TIME_S` of their start and held there, with no breaker trip and 0 s over a breaker.

`--json` prints `{"site", "controller", "seed", "summary": {...}, "targets": {...}, "events":
[...]}`; the table shows the summary and every event that was late.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from simulator.dr_campaign import (
    CHECK_S,
    ON_TIME_S,
    campaign_summary,
    random_events,
    run_campaign,
)
from simulator.scenario import load_scenario

NAME = "dr-campaign"
HELP = "random demand-response events on a 72-GPU-rack site: share met within 30 s of start"
DEFAULT_ARGS = ["--events", "200", "--seed", "1", "--jobs", "2"]
#: Target: the share of events at target within `ON_TIME_S` of their start.
MIN_ON_TIME_FRAC = 0.995
SITE = "gb200-nvl72"

Row = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200, metavar="N", help="events to run")
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="seed of the draw")
    parser.add_argument("--scenario", default=SITE, metavar="NAME", help="the site")
    parser.add_argument(
        "--controller", choices=("rheostat", "static", "threshold"), default="rheostat"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="J", help="events run at once (processes)"
    )
    parser.add_argument(
        "--check", type=float, default=CHECK_S, metavar="S", help="hold seconds checked"
    )


def run(args: argparse.Namespace) -> list[Row]:
    site = load_scenario(args.scenario)
    events = random_events(args.events, args.seed)
    results = list(
        run_campaign(site, events, controller=args.controller, check_s=args.check, jobs=args.jobs)
    )
    summary = campaign_summary(results)
    return [
        {
            "site": site.name,
            "controller": args.controller,
            "seed": args.seed,
            "summary": summary,
            "targets": targets(summary),
            "events": results,
        }
    ]


def targets(summary: Row) -> Row:
    frac = summary["on_time_frac"]
    return {
        "on_time_s": ON_TIME_S,
        "min_on_time_frac": MIN_ON_TIME_FRAC,
        "on_time_met": frac is not None and frac >= MIN_ON_TIME_FRAC,
        "breakers_met": summary["breaker_trips"] == 0 and summary["breaker_over_s"] == 0.0,
    }


def table(rows: Sequence[Row]) -> str:
    from bench._registry import format_table

    parts: list[str] = []
    for row in rows:
        tgt = row["targets"]
        missed = [
            *([] if tgt["on_time_met"] else [f"<{MIN_ON_TIME_FRAC:.1%} on time"]),
            *([] if tgt["breakers_met"] else ["breakers"]),
        ]
        head = {"site": row["site"], "controller": row["controller"], "seed": row["seed"]}
        parts.append(format_table([head | row["summary"] | {"targets": " ".join(missed) or "ok"}]))
        late = [
            {
                k: e[k]
                for k in (
                    "index",
                    "reduction_frac",
                    "notice_s",
                    "ramp_s",
                    "hold_s",
                    "reached_s",
                    "compliance",
                    "shortfall_kw_max",
                )
            }
            for e in row["events"]
            if not e["on_time"]
        ]
        if late:
            parts.append("late events:\n" + format_table(late))
    return "\n\n".join(parts)
