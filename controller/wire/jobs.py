"""Job reports: cluster scheduler -> controller, retained on `jobs/<job>` (QoS 1).

    {"v": 1, "ts": ..., "tier": 3, "deadline_ts": ..., "owed_s": 5400.0,
     "gpus": [{"rack": "r0001", "first": 0, "count": 8}], "sync": true}

`owed_s` is the work still owed before the deadline, in seconds of full-speed running;
`deadline_ts` and `owed_s` come together or not at all (a job without them is not shifted).
`"sync": true` (optional) marks a synchronous job, whose GPUs the decision paces to its slowest.
An empty retained message withdraws the job. The job's id is the topic's last level
(`is_job_id`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import orjson

from controller.wire.checks import MESSAGE_REASONS, Refusal, number_in, object_with_keys, safe_int
from controller.wire.protocol import MAX_RACK_ID_CHARS, PROTOCOL_VERSION, TS_RANGE_S
from policies.errors import ProtocolError
from policies.tiers import N_TIERS

#: GPU ranges in one job report.
MAX_JOB_RANGES: Final = 4096
#: Job ids (the topic level): 1-128 characters of this set.
JOB_ID_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"
)
MAX_JOB_ID_CHARS: Final = 128
_KEYS: Final = ("v", "ts", "tier", "deadline_ts", "owed_s", "gpus", "sync")


def is_job_id(name: str) -> bool:
    """A job id as a job topic's last level may carry it."""
    return 0 < len(name) <= MAX_JOB_ID_CHARS and set(name) <= JOB_ID_CHARS


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuRange:
    """GPUs `first .. first + count - 1` of rack `rack` (positions within the rack)."""

    rack: str
    first: int
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobReport:
    """What the scheduler says of one job. Units: s (Unix), s of full-speed work.

    `flexible` says the report carries a deadline and the work owed before it (only such a job
    can be shifted; without them `deadline_ts` is inf and `owed_s` 0); `sync` that the job's GPUs
    step together (`controller/jobs.py` paces them).
    """

    job: str
    ts: float
    tier: int
    gpus: tuple[GpuRange, ...]
    deadline_ts: float = math.inf
    owed_s: float = 0.0
    flexible: bool = True
    sync: bool = False


def _gpu_range(entry: object) -> GpuRange:
    if not isinstance(entry, dict) or set(entry) != {"rack", "first", "count"}:
        raise ProtocolError("each job gpus entry needs exactly rack, first and count")
    rack = entry["rack"]
    if not isinstance(rack, str) or not rack or len(rack) > MAX_RACK_ID_CHARS:
        raise ProtocolError("job gpus rack must be a rack id")
    return GpuRange(
        rack=rack,
        first=safe_int(entry, "first", None),
        count=safe_int(entry, "count", None, lo=1),
    )


def decode_job(payload: bytes, *, job: str) -> JobReport:
    """Validate a job report. Integers are safe integers, times finite Unix s up to 1e11, at
    most `MAX_JOB_RANGES` GPU ranges with rack ids of at most `MAX_RACK_ID_CHARS` characters."""
    with Refusal("job message: ", MESSAGE_REASONS):
        obj = object_with_keys(payload, _KEYS)
        tier = obj.get("tier")
        if isinstance(tier, bool) or not isinstance(tier, int) or not 0 <= tier < N_TIERS:
            raise ProtocolError(f"job tier must be an integer in 0..{N_TIERS - 1}")
        gpus = obj.get("gpus")
        if not isinstance(gpus, list) or not gpus:
            raise ProtocolError("job gpus must be a non-empty list")
        if len(gpus) > MAX_JOB_RANGES:
            raise ProtocolError(
                f"job gpus holds over {MAX_JOB_RANGES} ranges", reason="out_of_range"
            )
        ranges = tuple(map(_gpu_range, gpus))
        sync = obj.get("sync", False)
        if not isinstance(sync, bool):
            raise ProtocolError("job sync must be true or false")
        flexible = "deadline_ts" in obj
        if flexible != ("owed_s" in obj):
            raise ProtocolError("job deadline_ts and owed_s come together or not at all")
        work = {}
        if flexible:
            work = {
                "deadline_ts": number_in(obj, "deadline_ts", *TS_RANGE_S, None),
                "owed_s": number_in(obj, "owed_s", *TS_RANGE_S, None),
            }
        return JobReport(
            job=job,
            ts=number_in(obj, "ts", *TS_RANGE_S, None),
            tier=tier,
            gpus=ranges,
            flexible=flexible,
            sync=sync,
            **work,
        )


def encode_job(report: JobReport) -> bytes:
    obj: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "ts": report.ts,
        "tier": report.tier,
        "gpus": [{"rack": g.rack, "first": g.first, "count": g.count} for g in report.gpus],
    }
    if report.flexible:
        obj["deadline_ts"], obj["owed_s"] = report.deadline_ts, report.owed_s
    if report.sync:
        obj["sync"] = True
    return orjson.dumps(obj)
