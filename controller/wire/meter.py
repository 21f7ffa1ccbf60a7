"""Facility-meter readings: building management -> controller on `facility` (QoS 0).

    {"v": 1, "ts": 1764300000.0, "facility_w": 1520000.0, "it_w": 1180000.0, "outdoor_c": 31.5}

`it_w` (the IT power measured with the same instant's facility reading) and `outdoor_c` are
optional. The contract and demand-response targets apply at this meter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from controller.wire.checks import (
    MESSAGE_REASONS,
    Refusal,
    number_in,
    object_with_keys,
    optional_number_in,
)
from controller.wire.protocol import PROTOCOL_VERSION, TS_RANGE_S

#: Physical bounds of a facility reading: a broken meter, not a hot day. Units: W, degrees C.
FACILITY_RANGE_W: Final = (0.0, 1.0e9)
OUTDOOR_RANGE_C: Final = (-60.0, 70.0)
_KEYS: Final = ("v", "ts", "facility_w", "it_w", "outdoor_c")


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterReading:
    """One facility-meter message. Units: s (Unix), W, degrees C."""

    ts: float
    facility_w: float
    it_w: float | None = None
    outdoor_c: float | None = None


def decode_meter(payload: bytes) -> MeterReading:
    """Validate a facility-meter message; raises ProtocolError naming what is wrong."""
    with Refusal("facility message: ", MESSAGE_REASONS):
        obj = object_with_keys(payload, _KEYS)
        return MeterReading(
            ts=number_in(obj, "ts", *TS_RANGE_S, None),
            facility_w=number_in(obj, "facility_w", *FACILITY_RANGE_W, None),
            it_w=optional_number_in(obj, "it_w", *FACILITY_RANGE_W, None),
            outdoor_c=optional_number_in(obj, "outdoor_c", *OUTDOOR_RANGE_C, None),
        )


def encode_meter(reading: MeterReading) -> bytes:
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "ts": reading.ts,
        "facility_w": reading.facility_w,
    }
    if reading.it_w is not None:
        obj["it_w"] = reading.it_w
    if reading.outdoor_c is not None:
        obj["outdoor_c"] = reading.outdoor_c
    return orjson.dumps(obj)
