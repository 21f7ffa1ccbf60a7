"""`rheostat bench NAME`: run one benchmark from the `bench` package (table, or JSON with --json).

Registered as the `bench` entry point of `rheostat.commands`. The benchmarks live in the source
tree, not in the wheel: run from a checkout (`make bench`, or `rheostat bench` anywhere with an
editable install). Installed without them, `controller.cli` lists the command and says where to
run it. The benchmarks themselves are listed in `bench._registry.BENCHMARKS`.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from bench import _registry


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
