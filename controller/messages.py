"""Validation shared by the small JSON inputs beside telemetry (facility meter, forecasts, jobs).

Each of these topics has its own publisher (building management, an energy-management system,
the scheduler) and its own message; all of them must be a bounded JSON object of wire protocol
v1 with known keys and finite numbers in range, and a rejection must say what was wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from controller.wire import MAX_PAYLOAD_BYTES, PROTOCOL_VERSION
from policies.errors import ProtocolError


def json_object(payload: bytes, what: str, keys: set[str]) -> dict[str, Any]:
    """The payload as a v1 JSON object holding only `keys`; ProtocolError naming the fault."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"{what} message too large ({len(payload)} bytes)")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} message is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} message is not a JSON object")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"{what} message v={obj.get('v')!r}, expected {PROTOCOL_VERSION}")
    unknown = set(obj) - keys
    if unknown:
        raise ProtocolError(f"{what} message has unknown keys {sorted(unknown)}")
    return obj


def number(obj: dict[str, Any], key: str, what: str, lo: float, hi: float) -> float:
    """`obj[key]` as a finite float in [lo, hi] (booleans are not numbers here)."""
    raw = obj.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ProtocolError(f"{what} {key} must be a number")
    value = float(raw)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ProtocolError(f"{what} {key}={value} outside [{lo}, {hi}]")
    return value


def optional_number(obj: dict[str, Any], key: str, what: str, lo: float, hi: float) -> float | None:
    return None if obj.get(key) is None else number(obj, key, what, lo, hi)


def safe_int(obj: dict[str, Any], key: str, what: str, lo: int = 0, hi: int = 2**53 - 1) -> int:
    """`obj[key]` as a JSON integer in [lo, hi] (safe integers; booleans are not integers)."""
    raw = obj.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ProtocolError(f"{what} {key} must be an integer")
    if not lo <= raw <= hi:
        raise ProtocolError(f"{what} {key} outside [{lo}, {hi}]", reason="out_of_range")
    return raw


@dataclass(eq=False)
class MessageRejections:
    """Refused messages beside telemetry, by kind (topic family) and reason.

    Decoders that refuse a message count it here with their typed reason (grid events, job
    reports), and the daemon's receive loop counts any exception one message causes as
    `internal_error` (a fault) before going on. Both labels come from fixed sets (`KINDS`,
    `REASONS`), so the table stays small whatever the messages say.
    """

    KINDS: ClassVar[tuple[str, ...]] = (
        "telemetry",
        "grid_event",
        "job",
        "facility",
        "signal",
        "other",
    )
    REASONS: ClassVar[tuple[str, ...]] = (
        "malformed",
        "out_of_range",
        "too_large",
        "wrong_version",
        "internal_error",
    )
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def kind_of(cls, topic: str, site_prefix: str) -> str:
        """The topic family of `topic` under `site_prefix` (`rheostat/v1/<site>/`)."""
        if not topic.startswith(site_prefix):
            return "other"
        family = topic[len(site_prefix) :].split("/", 2)
        kind = {
            "telemetry": "telemetry",
            "jobs": "job",
            "facility": "facility",
        }.get(family[0])
        if kind is None and family[0] == "grid" and len(family) > 1:
            kind = {"event": "grid_event", "signal": "signal"}.get(family[1])
        return kind or "other"

    def count(self, kind: str, exc: BaseException) -> None:
        reason = getattr(exc, "reason", "internal_error")
        if reason not in self.REASONS:
            reason = "internal_error"
        key = (kind if kind in self.KINDS else "other", reason)
        self.counts[key] = self.counts.get(key, 0) + 1
