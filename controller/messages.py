"""Validation shared by the small JSON inputs beside telemetry (facility meter, forecasts, jobs).

Each of these topics has its own publisher (building management, an energy-management system,
the scheduler) and its own message; all of them must be a bounded JSON object of wire protocol
v1 with known keys and finite numbers in range, and a rejection must say what was wrong.
"""

from __future__ import annotations

import math
from typing import Any

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
