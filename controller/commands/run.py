"""`rheostat run --config FILE`: the controller daemon (systemd: Type=notify, SIGHUP reloads)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import sdnotify

from controller.logs import configure_logging
from controller.policy_file import load_policy


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("run", help="run the controller daemon with a policy file")
    parser.add_argument("--config", type=Path, required=True, help="policy file (YAML)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)  # a bad file fails here, before anything connects
    configure_logging(policy.config.logging.format, policy.config.logging.level)
    from controller.service import serve  # noqa: PLC0415 - keeps `rheostat --help` light

    asyncio.run(serve(policy, policy_path=args.config, notifier=sdnotify.SystemdNotifier()))
    return 0
