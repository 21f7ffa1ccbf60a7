"""Argument conventions every subcommand shares, so each file kind is named the same everywhere.

- A command's main input is positional where there is one (`check POLICY`, `decide SNAPSHOT`,
  `simulate SCENARIO`); the policy file is otherwise `--policy FILE` (`run`, `events`,
  `simulate`). Earlier spellings (`--config`, `--snapshot`) still work and are hidden from help.
- Durations are seconds: `--duration 90`, or with a unit, `90s`, `2m`, `1.5h`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_s(text: str) -> float:
    """`--duration` values: seconds, optionally with a unit (s, m, h, d). Units: s."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 90, 90s, 2m or 1.5h)")
    value = float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value


def add_duration(parser: argparse.ArgumentParser, help_text: str, default: float | None) -> None:
    suffix = "" if default is None else f" (default {default:g})"
    parser.add_argument(
        "--duration",
        type=duration_s,
        default=default,
        metavar="S",
        help=f"{help_text}: seconds, or with a unit: 90s, 2m, 1.5h{suffix}",
    )


def add_policy(parser: argparse.ArgumentParser, help_text: str = "policy file (YAML)") -> None:
    """`--policy FILE`, with the older `--config FILE` as a hidden alias."""
    parser.add_argument("--policy", type=Path, metavar="FILE", help=help_text)
    parser.add_argument("--config", type=Path, dest="policy", help=argparse.SUPPRESS)


def positional_or_option(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    positional: str,
    option: str,
    spelled: str,
) -> Path:
    """The file given positionally or by its option; exactly one, or a usage error.

    `spelled` is how the error names the two ways, e.g. "POLICY or --policy FILE".
    """
    given = [v for v in (getattr(args, positional), getattr(args, option)) if v is not None]
    if len(given) != 1:
        parser.error(f"give the file once: {spelled}")
    return Path(given[0])
