"""Controller status: its liveness, retained on `controller/status` (QoS 1).

Only the leader writes it (with HA); its MQTT last will sets it `offline`. Agents log it and go
on relying on their commands' TTL, not on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

from controller.wire.checks import Refusal, is_safe_int, number_in, parse_object
from controller.wire.protocol import MAX_ID_CHARS, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, TS_RANGE_S
from policies.errors import ProtocolError

_REASONS = ("malformed", "out_of_range")


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """The controller's liveness, retained on the status topic."""

    state: Literal["online", "offline"]
    ts_s: float
    controller: str
    epoch: int = 0


def encode_status(status: Status) -> bytes:
    return orjson.dumps(
        {
            "v": PROTOCOL_VERSION,
            "state": status.state,
            "ts": status.ts_s,
            "controller": status.controller,
            "epoch": status.epoch,
        }
    )


def decode_status(payload: bytes) -> Status:
    """Parse the controller's retained status; `ProtocolError` for anything else.

    Lenient where an older controller was: `v` is not required, and `ts`, `controller` and
    `epoch` default to 0, "" and 0.
    """
    with Refusal("status ", _REASONS):
        obj = parse_object(payload, limit=MAX_PAYLOAD_BYTES, rack=None)
        state = obj.get("state")
        if state not in ("online", "offline"):
            raise ProtocolError("status must be an object with state online|offline")
        ts_s = number_in(obj, "ts", *TS_RANGE_S, None) if "ts" in obj else 0.0
    controller = obj.get("controller", "")
    epoch = obj.get("epoch", 0)
    if not isinstance(controller, str) or len(controller) > MAX_ID_CHARS:
        raise ProtocolError("status controller must be an id of at most 64 chars")
    if not is_safe_int(epoch):
        raise ProtocolError("status epoch must be a safe integer", reason="out_of_range")
    return Status(state=state, ts_s=ts_s, controller=controller, epoch=epoch)
