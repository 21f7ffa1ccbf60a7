"""`rheostat simulate SCENARIO`: run a scenario in the accelerated closed loop and summarise it.

The run is deterministic under the scenario's seed. It is done twice: once with unlimited power
(the reference throughput is measured against) and once under the chosen controller.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a scenario (a YAML file or a shipped name) in the closed loop",
        description="Run a scenario against the simulated cluster and print its summary. "
        "Shipped scenarios: steady, budget-step, oversubscribed, training-swings, "
        "inference-trace.",
    )
    parser.add_argument("scenario", help="scenario file, or the name of a shipped scenario")
    parser.add_argument(
        "--policy", type=Path, help="policy file whose capping/DVFS settings to use"
    )
    parser.add_argument(
        "--controller", choices=("rheostat", "static", "threshold", "none"), default="rheostat"
    )
    parser.add_argument("--report", type=Path, metavar="DIR", help="write summary.json and plots")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--duration", type=float, metavar="S", help="cut the scenario short (seconds)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.progress import Progress  # noqa: PLC0415 - heavy imports stay out of --help

    from simulator.loop import run  # noqa: PLC0415
    from simulator.scenario import load_scenario  # noqa: PLC0415
    from simulator.summary import summarize  # noqa: PLC0415

    scenario = load_scenario(args.scenario)
    if args.duration is not None:
        scenario = scenario.shortened(args.duration)
    settings = None
    if args.policy is not None:
        from controller.policy_file import load_policy  # noqa: PLC0415

        settings = load_policy(args.policy).config.policy_settings()
    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        ref_task = bar.add_task("reference (unlimited)", total=1.0)
        reference = run(
            scenario, unlimited=True, progress=lambda f: bar.update(ref_task, completed=f)
        )
        task = bar.add_task(f"{scenario.name} under {args.controller}", total=1.0)
        controlled = run(
            scenario,
            controller=args.controller,
            settings=settings,
            progress=lambda f: bar.update(task, completed=f),
        )
        blind = even = None
        if scenario.carbon_policy is not None and args.controller == "rheostat":
            from simulator.carbon import blind_twin, even_twin  # noqa: PLC0415

            blind_task = bar.add_task(f"{scenario.name}, carbon-blind twin", total=1.0)
            blind = run(
                blind_twin(scenario),
                controller=args.controller,
                settings=settings,
                progress=lambda f: bar.update(blind_task, completed=f),
            )
            even_task = bar.add_task(f"{scenario.name}, evenly spread twin", total=1.0)
            even = run(
                even_twin(scenario),
                controller=args.controller,
                settings=settings,
                progress=lambda f: bar.update(even_task, completed=f),
            )
    summary = summarize(controlled, reference, blind=blind, even=even)
    if args.report is not None:
        from simulator.report import write_report  # noqa: PLC0415

        write_report(args.report, controlled, reference, summary)
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_table(summary)
    return 0


def _print_table(summary: dict[str, object]) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{summary['scenario']} under {summary['controller']}")
    table.add_column("metric")
    table.add_column("value", overflow="fold")
    for key, value in summary.items():
        if key in ("scenario", "controller"):
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        table.add_row(key, text)
    Console().print(table)
