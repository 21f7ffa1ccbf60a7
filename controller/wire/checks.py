"""The protocol's one set of validators: every decoder in this package checks its fields here.

Each check raises `TelemetryError` with the reason the fault is counted under (`malformed`,
`too_large`, `wrong_version`, `wrong_length`, `non_finite`, `out_of_range`) and a message naming
the field. Telemetry decoders let it through as it is; every other message kind turns it into its
own error type at its boundary with `Refusal` (a `ProtocolError` for the facility meter, the
grid signal, job reports and status; a command error whose reason an agent counts), so one
check says the same thing whichever message it guards. Booleans are never numbers here, integers
are safe integers, floats finite and in their documented range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Any, TypeGuard

import numpy as np
import orjson

from controller.wire.protocol import (
    ID_PATTERN,
    MAX_MESSAGE_CLASSES,
    MAX_PAYLOAD_BYTES,
    MAX_SAFE_INT,
    PROTOCOL_VERSION,
    FloatArray,
)
from policies.errors import ProtocolError, RheostatError, TelemetryError

#: Reasons a refused message beside telemetry is counted under (`MessageRejections.REASONS`
#: less `internal_error`).
MESSAGE_REASONS = ("malformed", "out_of_range", "too_large", "wrong_version")


def is_safe_int(value: object) -> TypeGuard[int]:
    """A JSON integer in [0, 2**53 - 1]; booleans are not integers here."""
    return type(value) is int and 0 <= value <= MAX_SAFE_INT


def is_id(value: object) -> TypeGuard[str]:
    """A boot or controller instance id: 1-64 characters of `[A-Za-z0-9._:-]`."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def is_number(value: object) -> TypeGuard[int | float]:
    """Exactly what orjson builds for a JSON number (not a boolean)."""
    return type(value) in (int, float)


def parse_object(payload: bytes, *, limit: int, rack: str | None) -> dict[str, Any]:
    """The payload as a JSON object, refused unparsed when over `limit` bytes."""
    if len(payload) > limit:
        raise TelemetryError("too_large", f"{len(payload)} bytes > {limit}", rack=rack)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise TelemetryError("malformed", f"not JSON: {exc}", rack=rack) from None
    if not isinstance(obj, dict):
        raise TelemetryError("malformed", "not a JSON object", rack=rack)
    return obj


def load_object(payload: bytes, *, limit: int, rack: str | None) -> dict[str, Any]:
    """`parse_object`, and the object must say `"v": 1`."""
    obj = parse_object(payload, limit=limit, rack=rack)
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise TelemetryError(
            "wrong_version", f"v={version!r}, expected {PROTOCOL_VERSION}", rack=rack
        )
    return obj


def object_with_keys(
    payload: bytes, keys: Collection[str], *, limit: int = MAX_PAYLOAD_BYTES
) -> dict[str, Any]:
    """`load_object` for messages with a closed set of keys: any other key is refused."""
    obj = load_object(payload, limit=limit, rack=None)
    unknown = set(obj) - set(keys)
    if unknown:
        raise TelemetryError("malformed", f"unknown keys {sorted(unknown)}", rack=None)
    return obj


def float_array(obj: dict[str, Any], key: str, rack: str | None) -> FloatArray:
    """`obj[key]` as a flat float64 array (not yet range-checked)."""
    raw = obj.get(key)
    if not isinstance(raw, list):
        raise TelemetryError("malformed", f"{key} must be an array", rack=rack)
    try:
        arr = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float
        raise TelemetryError("malformed", f"{key} must hold only numbers", rack=rack) from None
    if arr.ndim != 1:
        raise TelemetryError("malformed", f"{key} must be a flat array", rack=rack)
    return arr


def number(obj: dict[str, Any], key: str, rack: str | None) -> float:
    """`obj[key]` as a float (not yet range-checked)."""
    raw = obj.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TelemetryError("malformed", f"{key} must be a number", rack=rack)
    try:
        return float(raw)
    except OverflowError:  # an integer too large for a float
        raise TelemetryError("malformed", f"{key} is out of float range", rack=rack) from None


def number_in(obj: dict[str, Any], key: str, lo: float, hi: float, rack: str | None) -> float:
    """`obj[key]` as a finite float in [lo, hi]."""
    value = number(obj, key, rack)
    if not math.isfinite(value):
        raise TelemetryError("non_finite", f"{key} must be finite", rack=rack)
    if not lo <= value <= hi:
        raise TelemetryError("out_of_range", f"{key}={value} outside [{lo}, {hi}]", rack=rack)
    return value


def optional_number_in(
    obj: dict[str, Any], key: str, lo: float, hi: float, rack: str | None
) -> float | None:
    """`number_in`, or None when the key is absent or null."""
    return None if obj.get(key) is None else number_in(obj, key, lo, hi, rack)


def safe_int(
    obj: dict[str, Any], key: str, rack: str | None, *, lo: int = 0, hi: int = MAX_SAFE_INT
) -> int:
    """`obj[key]` as a JSON integer in [lo, hi] (within the safe integers)."""
    raw = obj.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise TelemetryError("malformed", f"{key} must be an integer", rack=rack)
    if not lo <= raw <= hi:
        top = "2**53 - 1" if hi == MAX_SAFE_INT else str(hi)
        raise TelemetryError("out_of_range", f"{key} outside [{lo}, {top}]", rack=rack)
    return raw


def check_range(name: str, arr: FloatArray, lo: float, hi: float, rack: str | None) -> None:
    """Every element finite and in [lo, hi]."""
    if not np.all(np.isfinite(arr)):
        raise TelemetryError("non_finite", f"{name} holds NaN or infinity", rack=rack)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise TelemetryError("out_of_range", f"{name} outside [{lo}, {hi}]", rack=rack)


def check_classes(classes: list[str], max_chars: int, rack: str | None) -> None:
    """At most `MAX_MESSAGE_CLASSES` workload-class names of at most `max_chars` each."""
    if len(classes) > MAX_MESSAGE_CLASSES:
        raise TelemetryError(
            "out_of_range", f"{len(classes)} classes > {MAX_MESSAGE_CLASSES}", rack=rack
        )
    if any(len(c) > max_chars for c in classes):
        raise TelemetryError("out_of_range", f"a class name is over {max_chars} chars", rack=rack)


class Refusal:
    """Turns a check's `TelemetryError` into the error a non-telemetry decoder raises.

    `with Refusal("facility message: ", MESSAGE_REASONS): ...` re-raises a failed check as
    `ProtocolError("facility message: <what failed>", reason=...)`. `non_finite` counts as
    `out_of_range` and a reason outside `reasons` as `malformed`, so the error only ever
    carries a label its counter knows. `error` builds the error (default `ProtocolError`).
    A class rather than a generator context manager: commands pass through it on every receipt.
    """

    __slots__ = ("error", "prefix", "rack", "reasons")

    def __init__(
        self,
        prefix: str,
        reasons: Collection[str],
        *,
        rack: str | None = None,
        error: Callable[[str, str, str | None], RheostatError] | None = None,
    ) -> None:
        self.prefix = prefix
        self.reasons = reasons
        self.rack = rack
        self.error = error or _protocol_error

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, TelemetryError):
            reason = "out_of_range" if exc.reason == "non_finite" else exc.reason
            if reason not in self.reasons:
                reason = "malformed"
            raise self.error(reason, f"{self.prefix}{exc.message}", self.rack) from None


def _protocol_error(reason: str, message: str, rack: str | None) -> RheostatError:
    return ProtocolError(message, rack=rack, reason=reason)
