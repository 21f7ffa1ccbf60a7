"""`rheostat check POLICY`: validate a policy file; report every problem with file, line, field."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.commands import _advice
from controller.commands._args import add_policy, positional_or_option
from controller.policy_file import load_policy
from policies.errors import ConfigError, ConfigErrors


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check", help="validate a policy file; report every error with file, line and field"
    )
    parser.add_argument("file", type=Path, nargs="?", metavar="POLICY", help="policy file (YAML)")
    add_policy(parser, "the policy file, as the other commands take it")
    parser.set_defaults(func=_run, parser=parser)


def _run(args: argparse.Namespace) -> int:
    args.file = positional_or_option(
        args.parser, args, positional="file", option="policy", spelled="POLICY or --policy FILE"
    )
    try:
        policy = load_policy(args.file)
    except ConfigErrors as exc:
        for error in exc.errors:
            hint = _advice.suggestion(error.field)
            text = ConfigError.__str__(error)
            print(text if hint is None else f"{text} ({hint})", file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    for field, warning in _advice.warnings(load_policy(args.file, environment=False).config):
        print(f"{args.file}: warning: {field}: {warning}", file=sys.stderr)
    topo = policy.topology
    rows = topo.levels[topo.rack_level + 1].size
    site_w = topo.levels[-1].usable_w[0] / policy.config.limits.psu_efficiency
    print(
        f"{args.file}: ok: site {policy.site}, {topo.n_gpus} GPUs in {topo.n_racks} racks "
        f"and {rows} rows, site limit {site_w:.0f} W at the wall"
    )
    return 0
