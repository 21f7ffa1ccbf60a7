"""The `rheostat` command line: one registry of subcommands, the `rheostat.commands` entry points.

Each subcommand is a module exposing `register(subparsers)`, named in pyproject.toml under
`[project.entry-points."rheostat.commands"]`. The daemon's own commands live in
`controller.commands`; those that run the simulator (`demo`, `simulate`, `agent`) live in
`simulator.commands` and the benchmarks' (`bench`) in `bench.cli`, so the daemon's package never
imports the packages layered above it: it only finds them here, by name, at run time. Heavy
imports (the simulator's loop, matplotlib) stay inside the handlers, keeping `rheostat --help`
fast. A subcommand exists only once it works.

`bench` ships only in a source checkout, not in the wheel: from an editable install its root is
put on the path; installed without it, the command is listed and says where to run it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Protocol, TypeAlias, cast

from controller import package_version
from policies.errors import ConfigError, RheostatError

#: The entry-point group every `rheostat` subcommand is registered under.
GROUP = "rheostat.commands"

#: What `add_subparsers` returns; argparse names no public type for it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # noqa: SLF001
Register: TypeAlias = Callable[[Subparsers], None]


class Handler(Protocol):
    def __call__(self, args: argparse.Namespace) -> int: ...


def commands() -> list[EntryPoint]:
    """Every registered subcommand, by name. None means the package's metadata is stale (it
    was installed before the registry existed): reinstall it."""
    found = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
    if not found:
        raise ConfigError(
            f"no `{GROUP}` entry points are installed: reinstall the package "
            "(`make install`, or `pip install -e .` in a checkout)"
        )
    return found


def _from_checkout(package: str) -> bool:
    """Whether `package`, absent from the install, is importable from the source checkout this
    package was installed from (editable installs map only the packages the wheel ships)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / package / "__init__.py").is_file() or sys.modules.get(package, 0) is None:
        return False
    if str(root) not in sys.path:
        sys.path.append(str(root))
    importlib.invalidate_caches()
    return importlib.util.find_spec(package) is not None


def load(ep: EntryPoint) -> Register | None:
    """The command's `register`, or None when its package is not installed (and not in a
    checkout). Any other import error is a bug in the command and propagates."""
    package = ep.module.split(".", 1)[0]
    try:
        return cast("Register", ep.load())
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".", 1)[0] != package:
            raise
    if not _from_checkout(package):
        return None
    return cast("Register", ep.load())


def _absent(subparsers: Subparsers, name: str, package: str) -> None:
    """List a command whose package is not installed; running it says where it can run."""
    parser = subparsers.add_parser(name, help=f"(needs `{package}`, from a source checkout)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def not_here(args: argparse.Namespace) -> int:
        del args
        raise ConfigError(
            f"`rheostat {name}` needs the `{package}` package, which is not installed with the "
            "package: run it from the repository root of a source checkout"
        )

    parser.set_defaults(func=not_here)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rheostat",
        description="Keep a GPU fleet inside its breaker, contract and grid limits.",
    )
    parser.add_argument("--version", action="version", version=f"rheostat {package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in commands():
        register = load(ep)
        if register is None:
            _absent(subparsers, ep.name, ep.module.split(".", 1)[0])
        else:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except RheostatError as exc:
        print(f"rheostat: error: {exc}", file=sys.stderr)
        return 2
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
