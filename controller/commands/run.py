"""`rheostat run --policy FILE`: the controller daemon (systemd: Type=notify, SIGHUP reloads)."""

from __future__ import annotations

import argparse
import asyncio

import sdnotify

from controller.commands._args import add_policy
from controller.logs import configure_logging
from controller.policy_file import load_policy


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("run", help="run the controller daemon with a policy file")
    add_policy(parser, "policy file (YAML), required")
    parser.set_defaults(func=_run, parser=parser)


def _run(args: argparse.Namespace) -> int:
    if args.policy is None:
        args.parser.error("--policy FILE is required")
    policy = load_policy(args.policy)  # a bad file fails here, before anything connects
    configure_logging(policy.config.logging.format, policy.config.logging.level)
    from controller.service import serve  # noqa: PLC0415 - keeps `rheostat --help` light

    asyncio.run(serve(policy, policy_path=args.policy, notifier=sdnotify.SystemdNotifier()))
    return 0
