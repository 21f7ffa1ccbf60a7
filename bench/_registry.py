"""Discovery and presentation shared by `rheostat bench` and `make bench`."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

Row = dict[str, Any]

#: Every benchmark: `rheostat bench NAME` -> the module that runs it, one line each, in the order
#: `make bench` runs them. A module provides `HELP` (one line), `add_arguments(parser)`,
#: `run(args) -> list[Row]`, and optionally `table(rows) -> str` and `DEFAULT_ARGS` (what
#: `make bench` passes). Adding a benchmark is one line here.
BENCHMARKS: dict[str, str] = {
    "calibration": "bench.calibration",
    "capacity": "bench.capacity",
    "control": "bench.control",
    "decide": "bench.decide",
    "dr": "bench.dr",
    "dr-campaign": "bench.dr_campaign",
    "e2e": "bench.e2e",
    "failover": "bench.failover",
    "ingest": "bench.ingest",
    "lending": "bench.lending",
    "simulate": "bench.simulate",
}


def modules() -> dict[str, ModuleType]:
    """Every benchmark module, by its `rheostat bench` name."""
    return {name: importlib.import_module(module) for name, module in BENCHMARKS.items()}


def format_table(rows: Sequence[Row]) -> str:
    """A plain fixed-width table: one column per key, in first-seen order."""
    if not rows:
        return "(no rows)"
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
        return str(value)

    cells = [[cell(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(k), *(len(r[i]) for r in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)
    return "\n".join(lines)


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, module in modules().items():
        parser = subparsers.add_parser(name, help=getattr(module, "HELP", None))
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        module.add_arguments(parser)
        runner: Callable[[argparse.Namespace], list[Row]] = module.run
        parser.set_defaults(bench_run=runner, bench_table=table_for(module))


def table_for(module: ModuleType) -> Callable[[Sequence[Row]], str]:
    """A benchmark's own `table(rows) -> str` when it has one, else `format_table`."""
    custom: Callable[[Sequence[Row]], str] | None = getattr(module, "table", None)
    return custom if custom is not None else format_table
