"""`rheostat check POLICY [--running FILE]`: validate a policy file and report every problem with
file, line and field.

It applies exactly the rules the daemon applies: `load_policy` (schema, topology, safe caps that
fit every limit) as at start and reload, and, given the policy now in force with `--running`,
`check_reload` (what only a restart may change) as the daemon's reload does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.commands import _advice
from controller.commands._args import add_policy, positional_or_option
from controller.policy_file import check_reload, load_policy
from policies.errors import ConfigError, ConfigErrors


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check", help="validate a policy file; report every error with file, line and field"
    )
    parser.add_argument("file", type=Path, nargs="?", metavar="POLICY", help="policy file (YAML)")
    add_policy(parser, "the policy file, as the other commands take it")
    parser.add_argument(
        "--running",
        type=Path,
        metavar="FILE",
        help="the policy the controller runs now: also apply the reload rules against it",
    )
    parser.set_defaults(func=_run, parser=parser)


def _run(args: argparse.Namespace) -> int:
    args.file = positional_or_option(
        args.parser, args, positional="file", option="policy", spelled="POLICY or --policy FILE"
    )
    try:
        policy = load_policy(args.file)
        if args.running is not None:
            check_reload(load_policy(args.running), policy)
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
    safe_frac = policy.safe_cap_w / topo.gpu_max_cap_w if topo.n_gpus else policy.safe_cap_w
    print(
        f"{args.file}: ok: site {policy.site}, {topo.n_gpus} GPUs in {topo.n_racks} racks "
        f"and {rows} rows, site limit {site_w:.0f} W at the wall, safe caps "
        f"{safe_frac.min(initial=1.0):.2f}-{safe_frac.max(initial=0.0):.2f} of max cap"
        + ("" if args.running is None else f", may replace {args.running} on a reload")
    )
    if policy.inventory is not None:
        inv = policy.inventory
        print(f"{inv.source}: ok: {len(inv.nodes)} nodes cover every GPU of {topo.n_racks} racks")
    return 0
