"""Grid-signal forecasts (carbon intensity or price): energy management -> controller on
`grid/signal` (QoS 1).

    {"v": 1, "ts": 1764300000.0, "start_ts": 1764300000.0, "slot_s": 300, "values": [412.0, ...]}

Values hold from `start_ts`, one per `slot_s`; a message replaces the forecast from its start on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import orjson

from controller.wire.checks import MESSAGE_REASONS, Refusal, is_number, number_in, object_with_keys
from controller.wire.protocol import PROTOCOL_VERSION, TS_RANGE_S
from policies.errors import ProtocolError

#: Longest forecast kept, in slots (a week of 5-minute slots).
MAX_FORECAST_SLOTS: Final = 7 * 24 * 12
#: Slot lengths a forecast may use. Units: s.
SLOT_RANGE_S: Final = (1.0, 86_400.0)
_KEYS: Final = ("v", "ts", "start_ts", "slot_s", "values")


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalMessage:
    """A forecast: `values[k]` holds from `start_ts + k * slot_s`. Units: s (Unix), signal."""

    ts: float
    start_ts: float
    slot_s: float
    values: tuple[float, ...]


def decode_signal(payload: bytes) -> SignalMessage:
    """Validate a forecast; raises ProtocolError naming what is wrong."""
    with Refusal("signal message: ", MESSAGE_REASONS):
        obj = object_with_keys(payload, _KEYS)
        values = obj.get("values")
        if not isinstance(values, list) or not values or len(values) > MAX_FORECAST_SLOTS:
            raise ProtocolError(f"signal values must be a list of 1..{MAX_FORECAST_SLOTS} numbers")
        # orjson builds no NaN or infinity, so a number is finite.
        if not all(map(is_number, values)):
            raise ProtocolError("signal values must be finite numbers")
        return SignalMessage(
            ts=number_in(obj, "ts", *TS_RANGE_S, None),
            start_ts=number_in(obj, "start_ts", *TS_RANGE_S, None),
            slot_s=number_in(obj, "slot_s", *SLOT_RANGE_S, None),
            values=tuple(map(float, values)),
        )


def encode_signal(msg: SignalMessage) -> bytes:
    return orjson.dumps(
        {
            "v": PROTOCOL_VERSION,
            "ts": msg.ts,
            "start_ts": msg.start_ts,
            "slot_s": msg.slot_s,
            "values": list(msg.values),
        }
    )
