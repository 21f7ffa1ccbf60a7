"""`rheostat bench NAME`: run one benchmark from the `bench` package (table, or JSON with --json).

The benchmarks live in the source tree, not in the wheel: run from a checkout (`make bench`, or
`rheostat bench` in the repository root). Installed without them, the command says so.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import orjson

import controller
from policies.errors import ConfigError


def _bench_importable() -> bool:
    """Whether `bench` imports; from a checkout (an editable install), its root is put on the
    path, since the editable install maps only the packages the wheel ships."""
    if importlib.util.find_spec("bench") is not None:
        return True
    root = Path(controller.__file__).resolve().parent.parent
    if not (root / "bench" / "__init__.py").is_file() or sys.modules.get("bench", 0) is None:
        return False
    sys.path.append(str(root))
    importlib.invalidate_caches()
    return importlib.util.find_spec("bench") is not None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    if not _bench_importable():
        parser = subparsers.add_parser("bench", help="run a benchmark (from a source checkout)")
        parser.add_argument("benchmark", nargs="*", help=argparse.SUPPRESS)
        parser.set_defaults(func=_not_here)
        return
    from bench import _registry  # noqa: PLC0415 - optional package, looked up at run time

    if not _registry.modules():
        return
    parser = subparsers.add_parser("bench", help="run a benchmark: a table, or JSON with --json")
    inner = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _registry.add_subcommands(inner)
    parser.set_defaults(func=_run)


def _not_here(args: argparse.Namespace) -> int:
    del args
    raise ConfigError(
        "the benchmarks are not installed with the package: run `rheostat bench` (or "
        "`make bench`) from the repository root of a source checkout"
    )


def _run(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = args.bench_run(args)
    if args.json:
        data: Any = rows[0] if len(rows) == 1 else rows
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print(args.bench_table(rows))
    return 0
