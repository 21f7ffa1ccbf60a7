"""`rheostat simulate SCENARIO`: run a scenario in the accelerated closed loop and summarise it.

The run is deterministic under the scenario's seed. It is done twice: once with unlimited power
(the reference throughput is measured against) and once under the chosen controller. Progress goes
to stderr: a redrawn line on a terminal, a plain line every few seconds through a pipe or a log.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import orjson

from controller.commands._args import add_duration, add_policy
from controller.commands._text import flatten, key_values

#: Seconds between progress lines when stderr is not a terminal.
PLAIN_PROGRESS_PERIOD_S = 5.0


#: `simulator.loop.CONTROLLERS`, named here so `rheostat --help` does not import the loop.
CONTROLLERS = ("rheostat", "static", "threshold", "none")


def shipped_scenarios() -> list[str]:
    """The scenarios shipped in `simulator/scenarios`, found without importing the loop."""
    folder = Path(__file__).resolve().parent.parent / "scenarios"
    return sorted(p.stem for p in folder.glob("*.yaml"))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a scenario (a YAML file or a shipped name) in the closed loop",
        description="Run a scenario against the simulated cluster and print its summary. "
        f"Shipped scenarios: {', '.join(shipped_scenarios())}.",
    )
    parser.add_argument("scenario", help="scenario file, or the name of a shipped scenario")
    add_policy(parser, "policy file whose capping/DVFS settings to use")
    parser.add_argument("--controller", choices=CONTROLLERS, default="rheostat")
    parser.add_argument(
        "--report", metavar="DIR", help="write summary.json and report.html (needs the sim extra)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_duration(parser, "cut the scenario short", None)
    parser.set_defaults(func=_run)


class ProgressLine:
    """Progress of the runs on stderr. Redrawn in place on a terminal; otherwise a plain line at
    most every `PLAIN_PROGRESS_PERIOD_S` seconds and one when each run finishes, so a run through
    a pipe or under a scheduler shows it is alive.
    """

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.clock = clock
        self._next_s = 0.0
        self._label = ""

    def task(self, label: str) -> Callable[[float], None]:
        self._label = label
        self._next_s = self.clock() + PLAIN_PROGRESS_PERIOD_S
        return self.update

    def update(self, fraction: float) -> None:
        line = f"{self._label}: {fraction:4.0%}"
        if self.tty:
            self.stream.write(f"\r\x1b[2K{line}")
            if fraction >= 1.0:
                self.stream.write("\r\x1b[2K")
        elif fraction >= 1.0 or self.clock() >= self._next_s:
            self.stream.write(line + "\n")
            self._next_s = self.clock() + PLAIN_PROGRESS_PERIOD_S
        self.stream.flush()


def _run(args: argparse.Namespace) -> int:
    from simulator.loop import run  # noqa: PLC0415 - heavy imports stay out of --help
    from simulator.scenario import load_scenario  # noqa: PLC0415
    from simulator.summary import summarize  # noqa: PLC0415

    if args.report is not None:  # before a long run, not after it
        from controller import extras  # noqa: PLC0415

        extras.check("matplotlib", "simulate --report")
    scenario = load_scenario(args.scenario)
    if args.duration is not None:
        scenario = scenario.shortened(args.duration)
    settings = None
    if args.policy is not None:
        from controller.policy_file import load_policy  # noqa: PLC0415

        settings = load_policy(args.policy).config.policy_settings()
    bar = ProgressLine(sys.stderr)
    reference = run(scenario, unlimited=True, progress=bar.task("reference (unlimited)"))
    controlled = run(
        scenario,
        controller=args.controller,
        settings=settings,
        progress=bar.task(f"{scenario.name} under {args.controller}"),
    )
    blind = even = None
    if scenario.carbon_policy is not None and args.controller == "rheostat":
        from simulator.carbon import blind_twin, even_twin  # noqa: PLC0415

        blind = run(
            blind_twin(scenario),
            controller=args.controller,
            settings=settings,
            progress=bar.task(f"{scenario.name}, carbon-blind twin"),
        )
        even = run(
            even_twin(scenario),
            controller=args.controller,
            settings=settings,
            progress=bar.task(f"{scenario.name}, evenly spread twin"),
        )
    summary = summarize(controlled, reference, blind=blind, even=even)
    if args.report is not None:
        from simulator.report import write_report  # noqa: PLC0415

        rows = list(flatten({k: v for k, v in summary.items() if k != "scenario"}))
        written = write_report(Path(args.report), controlled, reference, summary, rows=rows)
        print(f"report: {written[-1]}", file=sys.stderr)
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(summary_text(summary))
    return 0


def summary_text(summary: dict[str, Any]) -> str:
    """The summary for a person: a title line, then one `key  value` line per figure."""
    rest = {k: v for k, v in summary.items() if k not in ("scenario", "controller")}
    return f"{summary['scenario']} under {summary['controller']}\n{key_values(rest)}"
