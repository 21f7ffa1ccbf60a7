"""`rheostat bench NAME`: run one benchmark from the `bench` package (table, or JSON with --json).

Registered only when the `bench` package is importable (a source checkout or an install that
ships it) and holds at least one benchmark, so the command never appears empty.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import orjson


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    if importlib.util.find_spec("bench") is None:
        return
    from bench import _registry  # noqa: PLC0415 - optional package, looked up at run time

    if not _registry.modules():
        return
    parser = subparsers.add_parser("bench", help="run a benchmark: a table, or JSON with --json")
    inner = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _registry.add_subcommands(inner)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = args.bench_run(args)
    if args.json:
        data: Any = rows[0] if len(rows) == 1 else rows
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print(args.bench_table(rows))
    return 0
