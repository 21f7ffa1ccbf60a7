"""The `rheostat` command line.

Each subcommand lives in its own module under `controller.commands` and exposes
`register(subparsers)`; they are discovered here so adding a command never edits a shared list,
and heavy imports (the simulator, matplotlib) stay inside the commands that need them, keeping
`rheostat --help` fast. A subcommand exists only once it works.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol, cast

import controller.commands
from policies.errors import RheostatError


class Handler(Protocol):
    def __call__(self, args: argparse.Namespace) -> int: ...


def package_version() -> str:
    try:
        return version("rheostat")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rheostat",
        description="Keep a GPU fleet inside its breaker, contract and grid limits.",
    )
    parser.add_argument("--version", action="version", version=f"rheostat {package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(controller.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"controller.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = cast("Handler | None", getattr(args, "func", None))
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except RheostatError as exc:
        print(f"rheostat: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
