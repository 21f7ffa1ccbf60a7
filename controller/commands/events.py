"""`rheostat events`: the demand-response events in the store and where each one stands.

Reads the SQLite event store the daemon writes (given directly with --store, or found through the
policy file's `demand_response.store_path` with --policy); it never writes, so it is safe to run
next to a live controller.

With --policy, a relative store path is looked for where the daemon puts it. The daemon resolves
it under `$STATE_DIRECTORY`, which systemd sets only inside the unit (`StateDirectory=rheostat`:
/var/lib/rheostat) and the Kubernetes Deployment sets in the pod. An operator's shell has no such
variable, so the command tries, in order: `--state-dir DIR`; `$STATE_DIRECTORY`; the shipped
unit's /var/lib/rheostat when the store exists there; the policy file's directory (the daemon's
own choice when it runs without a state directory).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from controller.commands._args import add_policy
from controller.commands._text import table
from controller.config import DemandResponseSection
from controller.grid.store import EventStore, resolve_store_path
from controller.settings import environment_overrides, merge
from policies.dr.events import DrEvent
from policies.errors import ConfigError

#: The state directory the shipped systemd unit gives the daemon (`StateDirectory=rheostat`).
SYSTEMD_STATE_DIR = Path("/var/lib/rheostat")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "events", help="list demand-response events and their status (table, or --json)"
    )
    parser.add_argument("--store", type=Path, metavar="FILE", help="the SQLite event store")
    add_policy(parser, "or: the policy file (its demand_response.store_path)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=(
            "with --policy: the daemon's state directory, where a relative store_path lives"
            f" (default: $STATE_DIRECTORY, else {SYSTEMD_STATE_DIR} if the store is there,"
            " else beside the policy file)"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run, parser=parser)


def store_path_from_policy(
    path: Path,
    state_dir: Path | None = None,
    *,
    unit_state_dir: Path = SYSTEMD_STATE_DIR,
) -> Path:
    """The event store a policy file names, found where the daemon writes it (module docstring).

    Reads the environment as the daemon does: `$STATE_DIRECTORY` and `RHEOSTAT_*` overrides of
    the policy's fields. `unit_state_dir` is the systemd unit's state directory.
    """
    try:
        data = YAML(typ="safe").load(path.read_text())
    except (OSError, YAMLError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path)) from None
    if isinstance(data, dict):
        data = merge(data, environment_overrides())  # the daemon applies these too
    section = data.get("demand_response") if isinstance(data, dict) else None
    if section is None:
        raise ConfigError("no demand_response section", file=str(path), field="demand_response")
    try:
        dr = DemandResponseSection.model_validate(section)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(["demand_response", *(str(p) for p in first["loc"])])
        raise ConfigError(first["msg"], file=str(path), field=field) from None
    if dr.store_path.is_absolute():
        return dr.store_path
    if state_dir is not None:
        return state_dir / dr.store_path
    if os.environ.get("STATE_DIRECTORY"):
        return resolve_store_path(dr.store_path, path.parent)
    beside = path.parent / dr.store_path
    under_unit = unit_state_dir / dr.store_path
    try:
        if under_unit.exists():
            return under_unit
    except PermissionError:
        # systemd keeps a DynamicUser's state root-only (/var/lib/private, mode 0700).
        if not beside.exists():
            raise ConfigError(
                f"permission denied looking in {unit_state_dir} (the unit's state directory is"
                " root-only: run with sudo)",
                file=str(under_unit),
            ) from None
    return beside


def _iso(t_s: float | None) -> str | None:
    if t_s is None:
        return None
    return datetime.fromtimestamp(t_s, UTC).isoformat(timespec="seconds")


def describe(event: DrEvent, note: str, now_s: float) -> dict[str, Any]:
    """One event as `rheostat events --json` prints it. Units: s, kW, fractions."""
    baseline = event.baseline_w
    return {
        "event_id": event.event_id,
        "source": event.source,
        "status": event.status(now_s).value,
        "modification": event.modification,
        "start": _iso(event.start_s),
        "end": _iso(event.end_s),
        "duration_s": event.duration_s,
        "ramp_s": event.ramp_s,
        "recovery_s": event.recovery_s,
        "reduction_frac": event.reduction_frac,
        "limit_kw": None if event.limit_w is None else event.limit_w / 1e3,
        "baseline_kw": None if baseline is None else baseline / 1e3,
        "target_kw": None if baseline is None else event.target_w(baseline) / 1e3,
        "opted_in": event.opted_in,
        "cancelled_at": _iso(event.cancelled_s),
        "note": note,
    }


def run(args: argparse.Namespace) -> int:
    if (args.store is None) == (args.policy is None):
        args.parser.error("give one of --store FILE or --policy FILE")
    if args.state_dir is not None and args.policy is None:
        args.parser.error("--state-dir goes with --policy FILE")
    if args.store is not None:
        path = args.store
    else:
        path = store_path_from_policy(args.policy, args.state_dir)
    if not path.exists():
        raise ConfigError("no event store here (the controller creates it)", file=str(path))
    now_s = time.time()
    rows = [describe(e, note, now_s) for e, note in EventStore(path, read_only=True).all()]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not rows:
        print("no demand-response events")
        return 0
    body = []
    for row in rows:
        if row["reduction_frac"] is not None:
            target = f"-{row['reduction_frac']:.0%}"
        else:
            target = f"{row['limit_kw']:.1f} kW"
        if row["target_kw"] is not None and row["reduction_frac"] is not None:
            target += f" ({row['target_kw']:.1f} kW)"
        body.append(
            [
                row["event_id"],
                row["source"],
                row["status"],
                row["start"],
                f"{row['duration_s'] / 60:.0f} min",
                target,
                row["note"],
            ]
        )
    print(f"demand-response events ({path})")
    headers = ("event", "source", "status", "start (UTC)", "duration", "target", "note")
    print(table(headers, body))
    return 0
