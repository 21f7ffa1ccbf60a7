"""`rheostat decide SNAPSHOT [--json]`: a dry run of one decision on recorded inputs.

Prints what the controller would command (each GPU's cap and clock ceiling) and what each group
was granted against its limit, so an operator can check a policy or a limit before it goes live.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import orjson

from controller.commands._args import positional_or_option
from controller.snapshot import load_snapshot
from policies.errors import ConfigError, ConfigErrors, RheostatError
from policies.gpu_models import GPU_MODELS
from policies.pipeline import decide


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "decide", help="dry-run one decision on a recorded snapshot: caps, clocks, budgets"
    )
    parser.add_argument(
        "snapshot", type=Path, nargs="?", metavar="SNAPSHOT", help="snapshot file (JSON)"
    )
    parser.add_argument("--snapshot", type=Path, dest="snapshot_opt", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=_run, parser=parser)


def _run(args: argparse.Namespace) -> int:
    path = positional_or_option(
        args.parser, args, positional="snapshot", option="snapshot_opt", spelled="SNAPSHOT"
    )
    try:
        snap = load_snapshot(path)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(ConfigError.__str__(error), file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        decision, _ = decide(
            snap.topology,
            snap.fleet,
            tier=snap.tier,
            limits=snap.limits,
            settings=snap.settings,
            state=snap.state,
            now_s=snap.now_s,
            stale_rack=snap.stale_rack,
            sync_job=snap.sync_job,
        )
    except RheostatError as exc:  # inputs the snapshot's schema let through, named here
        print(f"{args.snapshot}: {exc}", file=sys.stderr)
        return 1
    topo = snap.topology
    servers = topo.levels[0].ids
    stale_gpu = snap.stale_rack[topo.gpu_group[topo.rack_level]]
    gpus = [
        {
            "gpu": i,
            "server": servers[int(topo.gpu_server[i])],
            "model": GPU_MODELS[int(topo.gpu_model[i])].name,
            "tier": int(decision.tier[i]),
            "stale": bool(stale_gpu[i]),
            "demand_w": round(float(decision.demand_w[i]), 1),
            "cap_w": round(float(decision.cap_w[i]), 1),
            "sm_clock_max_mhz": round(float(decision.sm_clock_max_mhz[i])),
        }
        for i in range(topo.n_gpus)
    ]
    groups = []
    for k, level in enumerate(topo.levels):
        for g, group_id in enumerate(level.ids):
            limit = float(decision.limit_w[k][g])
            budget = float(decision.budget_w[k][g])
            finite = math.isfinite(limit)
            groups.append(
                {
                    "level": level.name,
                    "id": group_id,
                    "budget_w": round(budget, 1),
                    "limit_w": round(limit, 1) if finite else None,
                    "headroom_w": round(limit - budget, 1) if finite else None,
                    "infeasible": bool(decision.infeasible[k][g]),
                }
            )
    summary = {
        "site": topo.site,
        "gpus_total": topo.n_gpus,
        "site_allowed_w": round(decision.site_allowed_w, 1),
        "dvfs_saving_w": round(decision.dvfs_saving_w, 1),
        "infeasible_groups": sum(1 for g in groups if g["infeasible"]),
    }
    if args.json:
        out = {**summary, "gpus": gpus, "groups": groups}
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(_table(gpus))
    print()
    print(_table(groups))
    print()
    print("  ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    keys = list(rows[0])
    cells = [["-" if r[k] is None else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
    lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)
    return "\n".join(lines)
