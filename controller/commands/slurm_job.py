"""`rheostat slurm-job start|end`: Slurm's PrologSlurmctld / EpilogSlurmctld (`deploy/slurm/`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "slurm-job", help="publish (start) or withdraw (end) a Slurm job's report"
    )
    parser.add_argument("action", choices=("start", "end"))
    parser.add_argument("--config", type=Path, required=True, help="slurm hook file (YAML)")
    parser.add_argument(
        "--job", default=os.environ.get("SLURM_JOB_ID"), help="default: $SLURM_JOB_ID"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from controller.slurm import job_hook  # noqa: PLC0415 - keeps `rheostat --help` light

    if not args.job or not args.job.isdigit():
        print("rheostat slurm-job: no job id (--job or SLURM_JOB_ID)")
        return 0
    return job_hook(args.config, args.action, args.job)
