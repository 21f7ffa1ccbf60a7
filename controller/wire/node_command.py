"""Node commands: the part of a rack's command one server's agent obeys.

Sent by the controller on `command/<rack>/<node>` (QoS 1, a body naming the node, arrays of the
node's GPUs), or taken by the agent as its slice of its rack's `command/<rack>`. Decoding raises
`CommandRejectedError` with the reason the agent counts (`COMMAND_REJECT_REASONS`); ordering is
`agent.gate`'s check, after this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from controller.wire.checks import Refusal, is_id, is_number, is_safe_int, load_object
from controller.wire.command import round_safe_caps
from controller.wire.protocol import (
    COMMAND_REJECT_REASONS,
    GPU_FIELD_RANGES,
    MAX_PAYLOAD_BYTES,
    MAX_TTL_S,
    PROTOCOL_VERSION,
    FloatArray,
)
from policies.errors import ProtocolError, RheostatError


class CommandRejectedError(ProtocolError):
    """An agent refused a command; `reason` is one of `COMMAND_REJECT_REASONS`."""

    def __init__(self, reason: str, message: str, *, rack: str | None = None) -> None:
        if reason not in COMMAND_REJECT_REASONS:
            raise ValueError(f"unknown command rejection reason {reason!r}")
        super().__init__(f"{reason}: {message}", rack=rack, reason=reason)


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class NodeCommand:
    """The part of a command that concerns one node, as its agent obeys it.

    `epoch`, `ctl` and `seq` order commands (see `agent.gate`); `ttl_s` counts on the agent's
    monotonic clock from receipt; `safe_cap_w` (NaN-free, or None when the controller sent none)
    is what the agent applies when the TTL runs out. Units: s, W, MHz.
    """

    rack: str
    epoch: int
    ctl: str
    seq: int
    issued_at_s: float
    ttl_s: float
    cap_w: FloatArray
    sm_clock_max_mhz: FloatArray
    safe_cap_w: FloatArray | None


def _rejected(reason: str, message: str, rack: str | None) -> RheostatError:
    return CommandRejectedError(reason, message, rack=rack)


def encode_node_command(cmd: NodeCommand, *, node: str) -> bytes:
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "rack": cmd.rack,
        "node": node,
        "epoch": cmd.epoch,
        "ctl": cmd.ctl,
        "seq": cmd.seq,
        "issued_at": cmd.issued_at_s,
        "ttl_s": cmd.ttl_s,
        "cap_w": np.round(cmd.cap_w, 1),
        "sm_clock_max_mhz": np.round(cmd.sm_clock_max_mhz, 0),
    }
    if cmd.safe_cap_w is not None:
        body["safe_cap_w"] = round_safe_caps(cmd.safe_cap_w)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _command_array(obj: dict[str, Any], key: str, size: int, hi: float, rack: str) -> FloatArray:
    raw = obj.get(key)
    if not isinstance(raw, list) or not all(map(is_number, raw)):
        raise CommandRejectedError("malformed", f"{key} must be an array of numbers", rack=rack)
    if len(raw) != size:
        raise CommandRejectedError("wrong_length", f"{key} has {len(raw)}, not {size}", rack=rack)
    try:
        arr = np.array(raw, dtype=np.float64)
    except OverflowError:
        raise CommandRejectedError("out_of_range", f"{key} beyond float range", rack=rack) from None
    if not (np.all(np.isfinite(arr)) and np.all(arr >= 0) and np.all(arr <= hi)):
        raise CommandRejectedError("out_of_range", f"{key} outside [0, {hi}]", rack=rack)
    return arr


def decode_node_command(
    payload: bytes,
    *,
    rack: str,
    node: str,
    first: int,
    count: int,
    rack_gpus: int,
    node_topic: bool = False,
) -> NodeCommand:
    """A command for node `node` (GPUs `first .. first + count - 1` of its rack), from either its
    node topic (a body naming `node`, arrays of `count`) or its rack's topic (no `node`, arrays of
    `rack_gpus`, sliced here). Raises `CommandRejectedError` with the reason it is counted under.

    `node_topic` says it came on the node topic, where the body must name the node (and only
    there). `epoch` and `ctl` are optional (a controller without HA sends neither: epoch 0, ctl "").
    """
    with Refusal("", COMMAND_REJECT_REASONS, rack=rack, error=_rejected):
        obj = load_object(payload, limit=MAX_PAYLOAD_BYTES, rack=rack)
    if obj.get("rack") != rack:
        raise CommandRejectedError("wrong_rack", f"names rack {obj.get('rack')!r}", rack=rack)
    body_node = obj.get("node")
    if (body_node is not None and body_node != node) or node_topic != (body_node is not None):
        raise CommandRejectedError("wrong_rack", f"names node {body_node!r}", rack=rack)
    epoch, ctl, seq = obj.get("epoch", 0), obj.get("ctl", ""), obj.get("seq")
    if not (is_safe_int(epoch) and is_safe_int(seq)):
        raise CommandRejectedError("out_of_range", "epoch and seq must be safe ints", rack=rack)
    if not (ctl == "" or is_id(ctl)):
        raise CommandRejectedError("malformed", "ctl must be an id", rack=rack)
    issued, ttl = obj.get("issued_at"), obj.get("ttl_s")
    if not (is_number(issued) and is_number(ttl)):
        raise CommandRejectedError("malformed", "issued_at and ttl_s must be numbers", rack=rack)
    try:
        issued_s, ttl_s = float(issued), float(ttl)
    except OverflowError:
        raise CommandRejectedError(
            "out_of_range", "issued_at or ttl_s too large", rack=rack
        ) from None
    if not (math.isfinite(issued_s) and 0 < ttl_s <= MAX_TTL_S):
        raise CommandRejectedError("out_of_range", f"ttl_s must be in (0, {MAX_TTL_S}]", rack=rack)
    size = count if body_node is not None else rack_gpus
    cap_hi, clock_hi = GPU_FIELD_RANGES["cap_w"][1], GPU_FIELD_RANGES["sm_clock_mhz"][1]
    caps = _command_array(obj, "cap_w", size, cap_hi, rack)
    clocks = _command_array(obj, "sm_clock_max_mhz", size, clock_hi, rack)
    safe = (
        None if "safe_cap_w" not in obj else _command_array(obj, "safe_cap_w", size, cap_hi, rack)
    )
    rows = slice(0, count) if body_node is not None else slice(first, first + count)
    if rows.stop > size:
        raise CommandRejectedError("wrong_length", f"node GPUs end past {size}", rack=rack)
    return NodeCommand(
        rack=rack,
        epoch=epoch,
        ctl=ctl,
        seq=seq,
        issued_at_s=issued_s,
        ttl_s=ttl_s,
        cap_w=caps[rows],
        sm_clock_max_mhz=clocks[rows],
        safe_cap_w=None if safe is None else safe[rows],
    )
