"""Discovery and presentation shared by `rheostat bench` and `make bench`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import bench

Row = dict[str, Any]


def modules() -> dict[str, ModuleType]:
    """Every benchmark module, by its NAME."""
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "run_all":
            continue
        module = importlib.import_module(f"bench.{info.name}")
        name = getattr(module, "NAME", None)
        if isinstance(name, str):
            if name in found:
                raise RuntimeError(f"two benchmarks are named {name!r}")
            found[name] = module
    return found


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
