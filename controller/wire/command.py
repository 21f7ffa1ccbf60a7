"""Rack commands: caps and clock ceilings, controller -> agents on `command/<rack>` (QoS 1).

Order comes from counters, never from clocks: a command carries (epoch, controller instance,
seq) and agents apply `accept_command`; `ttl_s` counts on the agent's monotonic clock from
receipt, and `issued_at` is informational only. Decoding raises `ProtocolError` whose reason is
one of `COMMAND_REJECT_REASONS`, the label the agent counts and reports in its telemetry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from controller.wire.checks import (
    Refusal,
    check_range,
    float_array,
    is_id,
    load_object,
    number,
    number_in,
    safe_int,
)
from controller.wire.protocol import (
    COMMAND_REJECT_REASONS,
    GPU_FIELD_RANGES,
    MAX_PAYLOAD_BYTES,
    MAX_RACK_ID_CHARS,
    MAX_TTL_S,
    PROTOCOL_VERSION,
    TS_RANGE_S,
    FloatArray,
)
from policies.errors import ProtocolError, TelemetryError


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Command:
    """Caps and clock ceilings for one rack, valid for `ttl_s` after `issued_at_s`.

    An agent that hears nothing newer within `ttl_s` of receiving it (on its own monotonic
    clock, so no wall clock can extend or shorten a command) falls back to its safe caps:
    `safe_cap_w` from its last command when that carried them (per GPU, W; derived so that
    every rack on them at once fits every limit), else its configured ones. `issued_at_s` is
    informational only. `accept_command` is the agents' ordering rule.
    """

    rack: str
    seq: int
    issued_at_s: float
    ttl_s: float
    cap_w: FloatArray
    sm_clock_max_mhz: FloatArray
    safe_cap_w: FloatArray | None = None
    #: The leader's term (0 when HA is off) and the controller instance that sent it; agents
    #: order commands by (epoch, ctl, seq), never by `issued_at_s`.
    epoch: int = 0
    ctl: str = "rheostat"

    @property
    def n_gpus(self) -> int:
        return int(self.cap_w.size)


def encode_command(cmd: Command) -> bytes:
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "rack": cmd.rack,
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


def round_safe_caps(safe_cap_w: FloatArray) -> FloatArray:
    """Safe caps to 0.1 W, rounded down: rounding up could take them over the limit they fit."""
    return np.floor(np.asarray(safe_cap_w, dtype=np.float64) * 10.0) / 10.0


def encode_commands(
    racks: Sequence[str],
    *,
    seq: NDArray[np.int64],
    issued_at_s: float,
    ttl_s: float,
    cap_w: FloatArray,
    sm_clock_max_mhz: FloatArray,
    starts: NDArray[np.int64],
    ends: NDArray[np.int64],
    safe_cap_w: FloatArray | None = None,
    epoch: int = 0,
    ctl: str = "rheostat",
) -> list[bytes]:
    """Many racks' commands at once, byte for byte what `encode_command` writes for each.

    `cap_w` and `sm_clock_max_mhz` are fleet-wide per-GPU arrays; rack i's rows are
    `starts[i]:ends[i]`. Rounding happens once over the rows sent rather than once per rack,
    and no `Command` is built, which makes a burst to every rack about 3x cheaper. One
    `orjson.dumps` per rack remains: each rack gets its own message.
    """
    caps = np.round(cap_w, 1)
    clocks = np.round(sm_clock_max_mhz, 0)
    safe = None if safe_cap_w is None else round_safe_caps(safe_cap_w)
    option = orjson.OPT_SERIALIZE_NUMPY
    out = []
    for rack, rack_seq, start, end in zip(
        racks, seq.tolist(), starts.tolist(), ends.tolist(), strict=True
    ):
        body: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "rack": rack,
            "epoch": epoch,
            "ctl": ctl,
            "seq": rack_seq,
            "issued_at": issued_at_s,
            "ttl_s": ttl_s,
            "cap_w": caps[start:end],
            "sm_clock_max_mhz": clocks[start:end],
        }
        if safe is not None:
            body["safe_cap_w"] = safe[start:end]
        out.append(orjson.dumps(body, option=option))
    return out


def decode_command(
    payload: bytes, *, rack: str | None = None, expected_gpus: int | None = None
) -> Command:
    """Parse and validate a command, as an agent does before obeying it.

    Raises `ProtocolError` whose `reason` is one of `COMMAND_REJECT_REASONS` (what the agent
    counts it under). Ordering (`accept_command`) is the agent's next check, not this one's.
    """
    cap_hi, clock_hi = GPU_FIELD_RANGES["cap_w"][1], GPU_FIELD_RANGES["sm_clock_mhz"][1]
    with Refusal("bad command: ", COMMAND_REJECT_REASONS, rack=rack):
        obj = load_object(payload, limit=MAX_PAYLOAD_BYTES, rack=rack)
        body_rack = obj.get("rack")
        if not isinstance(body_rack, str) or not body_rack or len(body_rack) > MAX_RACK_ID_CHARS:
            raise TelemetryError("malformed", "rack must be a rack id", rack=rack)
        if rack is not None and body_rack != rack:
            raise ProtocolError(f"command for rack {body_rack!r}", rack=rack, reason="wrong_rack")
        epoch = safe_int(obj, "epoch", rack)
        ctl = obj.get("ctl")
        if not is_id(ctl):
            raise TelemetryError(
                "malformed", "ctl must be 1-64 chars of [A-Za-z0-9._:-]", rack=rack
            )
        seq = safe_int(obj, "seq", rack)
        issued = number_in(obj, "issued_at", *TS_RANGE_S, rack)
        ttl = number(obj, "ttl_s", rack)
        caps = float_array(obj, "cap_w", rack)
        clocks = float_array(obj, "sm_clock_max_mhz", rack)
        if caps.size != clocks.size or (expected_gpus is not None and caps.size != expected_gpus):
            raise TelemetryError("wrong_length", "cap_w and sm_clock_max_mhz lengths", rack=rack)
        safe = None if obj.get("safe_cap_w") is None else float_array(obj, "safe_cap_w", rack)
        if safe is not None:
            if safe.size != caps.size:
                raise TelemetryError("wrong_length", "safe_cap_w and cap_w differ", rack=rack)
            check_range("safe_cap_w", safe, 0.0, cap_hi, rack)
        check_range("cap_w", caps, 0.0, cap_hi, rack)
        check_range("sm_clock_max_mhz", clocks, 0.0, clock_hi, rack)
        if not 0 < ttl <= MAX_TTL_S:  # NaN fails too
            raise TelemetryError("out_of_range", f"ttl_s outside (0, {MAX_TTL_S}]", rack=rack)
    return Command(
        rack=body_rack,
        seq=seq,
        issued_at_s=issued,
        ttl_s=ttl,
        cap_w=caps,
        sm_clock_max_mhz=clocks,
        safe_cap_w=safe,
        epoch=epoch,
        ctl=ctl,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldCommand:
    """What an agent remembers of the command in force: its (epoch, ctl, seq)."""

    epoch: int
    ctl: str
    seq: int


def accept_command(held: HeldCommand | None, cmd: Command) -> str | None:
    """The agents' ordering rule: None to accept `cmd`, else the rejection reason.

    A higher epoch wins (a new leader's term); in the same epoch a different controller instance
    is accepted (a restarted controller begins its sequence again); the same instance must count
    upwards. Wall clocks play no part, so a controller whose clock steps back still commands.
    """
    if held is None or cmd.epoch > held.epoch:
        return None
    if cmd.epoch < held.epoch:
        return "stale_epoch"
    if cmd.ctl != held.ctl or cmd.seq > held.seq:
        return None
    return "stale_seq"
