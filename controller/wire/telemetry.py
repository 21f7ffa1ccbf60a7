"""Rack telemetry: one rack's per-GPU readings, agent -> controller on `telemetry/<rack>` (QoS 0).

Decoding validates everything a sender could get wrong (shape, finiteness, physical ranges, safe
integers, bounded strings) and raises `TelemetryError` with the reason it is counted under;
callers never see a half-valid message. Per-GPU values travel as JSON arrays and land as numpy
arrays, never as Python lists walked one GPU at a time. Order comes from counters, never from
clocks: each message carries the agent's boot id and a sequence. This is the daemon's hot path:
`_decode_valid` accepts a valid message in one pass, and only a faulty one takes the
field-by-field `_decode_checked`, which finds the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson
from numpy.typing import NDArray

from controller.wire.checks import (
    check_classes,
    check_range,
    float_array,
    is_id,
    load_object,
    number,
    safe_int,
)
from controller.wire.protocol import (
    COMMAND_REJECT_REASONS,
    GPU_FIELD_RANGES,
    MAX_CLASS_NAME_CHARS,
    MAX_MESSAGE_CLASSES,
    MAX_PAYLOAD_BYTES,
    MAX_RACK_ID_CHARS,
    MAX_SAFE_INT,
    PROTOCOL_VERSION,
    RACK_POWER_RANGE_W,
    TS_RANGE_S,
    FloatArray,
)
from policies.errors import TelemetryError


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Telemetry:
    """One rack's readings. Per-GPU arrays share one length; `class_idx` indexes `classes`."""

    rack: str
    seq: int
    ts_s: float
    power_w: FloatArray
    sm_clock_mhz: FloatArray
    util: FloatArray
    mem_util: FloatArray
    temp_c: FloatArray
    cap_w: FloatArray
    classes: tuple[str, ...]
    class_idx: NDArray[np.int64]
    rack_power_w: float
    #: The agent's boot id: a new one restarts the sequence. None: an agent that sends none.
    boot: str | None = None
    #: Epoch and seq of the last command the agent applied (None before the first one).
    cmd_epoch: int | None = None
    cmd_seq: int | None = None
    #: Commands the agent refused since it booted, by reason (`COMMAND_REJECT_REASONS`).
    cmd_rejected: Mapping[str, int] = field(default_factory=dict)
    #: The agent is on its safe caps: its last command's TTL ran out.
    fallback: bool = False

    @property
    def n_gpus(self) -> int:
        return int(self.power_w.size)


def encode_telemetry(msg: Telemetry) -> bytes:
    extra: dict[str, Any] = {}
    if msg.boot is not None:
        extra["boot"] = msg.boot
    if msg.cmd_epoch is not None:
        extra["cmd_epoch"] = msg.cmd_epoch
    if msg.cmd_seq is not None:
        extra["cmd_seq"] = msg.cmd_seq
    if msg.cmd_rejected:
        extra["cmd_rejected"] = dict(msg.cmd_rejected)
    if msg.fallback:
        extra["fallback"] = True
    return orjson.dumps(
        {
            **extra,
            "v": PROTOCOL_VERSION,
            "rack": msg.rack,
            "seq": msg.seq,
            "ts": msg.ts_s,
            "power_w": msg.power_w,
            "sm_clock_mhz": msg.sm_clock_mhz,
            "util": msg.util,
            "mem_util": msg.mem_util,
            "temp_c": msg.temp_c,
            "cap_w": msg.cap_w,
            "classes": list(msg.classes),
            "class_idx": msg.class_idx,
            "rack_power_w": msg.rack_power_w,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def _agent_fields(obj: dict[str, Any], rack: str | None) -> dict[str, Any]:
    """The optional fields an agent adds: boot id, last applied command, rejections, fallback."""
    out: dict[str, Any] = {}
    boot = obj.get("boot")
    if boot is not None:
        if not is_id(boot):
            raise TelemetryError(
                "malformed", "boot must be 1-64 chars of [A-Za-z0-9._:-]", rack=rack
            )
        out["boot"] = boot
    for key in ("cmd_epoch", "cmd_seq"):
        if obj.get(key) is not None:
            out[key] = safe_int(obj, key, rack)
    rejected = obj.get("cmd_rejected")
    if rejected is not None:
        if not isinstance(rejected, dict) or not set(rejected) <= set(COMMAND_REJECT_REASONS):
            raise TelemetryError(
                "malformed", f"cmd_rejected must map reasons {COMMAND_REJECT_REASONS}", rack=rack
            )
        out["cmd_rejected"] = {key: safe_int(rejected, key, rack) for key in rejected}
    fallback = obj.get("fallback", False)
    if not isinstance(fallback, bool):
        raise TelemetryError("malformed", "fallback must be true or false", rack=rack)
    out["fallback"] = fallback
    return out


_GPU_KEYS: Final = (*GPU_FIELD_RANGES, "class_idx")
_GPU_LO: Final = np.array([*(lo for lo, _ in GPU_FIELD_RANGES.values()), 0.0])[:, None]
_GPU_HI_BY_CLASSES: dict[int, FloatArray] = {}


def _gpu_hi(n_classes: int) -> FloatArray:
    """Upper bounds of the (7, 1) grid: the field ranges, then the last class index (cached)."""
    hi = _GPU_HI_BY_CLASSES.get(n_classes)
    if hi is None:  # at most MAX_MESSAGE_CLASSES + 1 entries
        fields = [hi for _, hi in GPU_FIELD_RANGES.values()]
        hi = _GPU_HI_BY_CLASSES[n_classes] = np.array([*fields, n_classes - 1.0])[:, None]
    return hi


def _decode_valid(
    obj: dict[str, Any], *, rack: str | None, expected_gpus: int | None
) -> Telemetry | None:
    """The common case in one pass: a fully valid message, or None for the field-by-field path.

    All per-GPU lists become one (7, n) array with a single `np.array` call and are range-checked
    together (class indices included, as the seventh row) in one comparison against precomputed
    bounds, about 5x cheaper than one array and one check per field. Anything unusual (a missing
    or ragged field, a non-number, a value out of range, a type other than exactly what orjson
    builds) returns None, and the caller's field-by-field checks then find the reason, so both
    paths reject exactly the same messages with the same reasons; this one only accepts faster.
    """
    get = obj.get
    body_rack = get("rack")
    seq = get("seq")
    ts = get("ts")
    rack_power = get("rack_power_w")
    classes = get("classes")
    if (
        type(body_rack) is not str
        or not body_rack
        or (rack is not None and body_rack != rack)
        or len(body_rack) > MAX_RACK_ID_CHARS
        or type(seq) is not int
        or not 0 <= seq <= MAX_SAFE_INT
        or (type(ts) is not float and type(ts) is not int)
        or (type(rack_power) is not float and type(rack_power) is not int)
        or type(classes) is not list
        or len(classes) > MAX_MESSAGE_CLASSES
        or not all(type(c) is str and len(c) <= MAX_CLASS_NAME_CHARS for c in classes)
    ):
        return None
    raw = [get(key) for key in _GPU_KEYS]
    for r in raw:
        if type(r) is not list:
            return None
    try:
        grid = np.array(raw, dtype=np.float64)
        ts_s, rack_power_w = float(ts), float(rack_power)
    except (TypeError, ValueError, OverflowError):
        return None
    if grid.ndim != 2:
        return None
    n = grid.shape[1]
    if expected_gpus is not None and n != expected_gpus:
        return None
    lo, hi = RACK_POWER_RANGE_W
    ts_lo, ts_hi = TS_RANGE_S
    if not (ts_lo <= ts_s <= ts_hi and lo <= rack_power_w <= hi):  # NaN fails range tests too
        return None
    if not n:
        class_idx = np.zeros(0, dtype=np.int64)
    else:
        # One pass over every field and the class indices (the last row, in [0, len(classes) -
        # 1]); NaN fails every comparison, so this also checks finiteness.
        if not np.logical_and(grid >= _GPU_LO, grid <= _gpu_hi(len(classes))).all():
            return None
        class_idx_f = grid[-1]
        if not (np.floor(class_idx_f) == class_idx_f).all():  # a fraction is no index
            return None
        class_idx = class_idx_f.astype(np.int64)  # safe: whole, finite and in range by now
    power_w, sm_clock_mhz, util, mem_util, temp_c, cap_w = grid[:-1]
    return Telemetry(
        rack=body_rack,
        seq=seq,
        ts_s=ts_s,
        classes=tuple(classes),
        class_idx=class_idx,
        rack_power_w=rack_power_w,
        power_w=power_w,
        sm_clock_mhz=sm_clock_mhz,
        util=util,
        mem_util=mem_util,
        temp_c=temp_c,
        cap_w=cap_w,
        **_agent_fields(obj, body_rack),
    )


def decode_telemetry(
    payload: bytes,
    *,
    rack: str | None = None,
    expected_gpus: int | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> Telemetry:
    """Parse and validate one telemetry payload, or raise `TelemetryError` with its reason.

    `rack`, when given (from the topic), must match the payload's own rack id; `expected_gpus`,
    when given (from the topology), must match every per-GPU array's length. Integers must be
    safe integers, strings are bounded (`MAX_RACK_ID_CHARS`, `MAX_MESSAGE_CLASSES`, ...).
    """
    obj = load_object(payload, limit=max_bytes, rack=rack)
    fast = _decode_valid(obj, rack=rack, expected_gpus=expected_gpus)
    if fast is not None:
        return fast
    return _decode_checked(obj, rack=rack, expected_gpus=expected_gpus)


def _decode_checked(
    obj: dict[str, Any], *, rack: str | None, expected_gpus: int | None
) -> Telemetry:
    """The field-by-field path: every check in turn, raising the first one's reason."""
    body_rack = obj.get("rack")
    if not isinstance(body_rack, str) or not body_rack:
        raise TelemetryError("malformed", "rack must be a non-empty string", rack=rack)
    if len(body_rack) > MAX_RACK_ID_CHARS:
        raise TelemetryError("out_of_range", "rack id too long", rack=rack)
    if rack is not None and body_rack != rack:
        raise TelemetryError("malformed", f"payload names rack {body_rack!r}", rack=rack)
    seq = safe_int(obj, "seq", body_rack)
    ts = number(obj, "ts", body_rack)
    arrays = {key: float_array(obj, key, body_rack) for key in GPU_FIELD_RANGES}
    classes = obj.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise TelemetryError("malformed", "classes must be an array of strings", rack=body_rack)
    check_classes(classes, MAX_CLASS_NAME_CHARS, body_rack)
    class_idx_f = float_array(obj, "class_idx", body_rack)
    rack_power = number(obj, "rack_power_w", body_rack)

    n = arrays["power_w"].size
    lengths = {key: arr.size for key, arr in arrays.items()} | {"class_idx": class_idx_f.size}
    if any(size != n for size in lengths.values()):
        raise TelemetryError(
            "wrong_length", f"per-GPU arrays differ in length: {lengths}", rack=body_rack
        )
    if expected_gpus is not None and n != expected_gpus:
        raise TelemetryError("wrong_length", f"{n} GPUs, expected {expected_gpus}", rack=body_rack)
    if not np.isfinite(ts) or not np.isfinite(rack_power):
        raise TelemetryError("non_finite", "ts and rack_power_w must be finite", rack=body_rack)
    for key, (lo, hi) in GPU_FIELD_RANGES.items():
        check_range(key, arrays[key], lo, hi, body_rack)
    check_range("rack_power_w", np.array([rack_power]), *RACK_POWER_RANGE_W, body_rack)
    check_range("ts", np.array([ts]), *TS_RANGE_S, body_rack)
    agent = _agent_fields(obj, body_rack)
    if class_idx_f.size and (
        np.any(class_idx_f != np.floor(class_idx_f))
        or class_idx_f.min() < 0
        or class_idx_f.max() >= len(classes)
    ):
        raise TelemetryError("out_of_range", "class_idx must index classes", rack=body_rack)
    return Telemetry(
        rack=body_rack,
        seq=seq,
        ts_s=ts,
        classes=tuple(classes),
        class_idx=class_idx_f.astype(np.int64),
        rack_power_w=rack_power,
        power_w=arrays["power_w"],
        sm_clock_mhz=arrays["sm_clock_mhz"],
        util=arrays["util"],
        mem_util=arrays["mem_util"],
        temp_c=arrays["temp_c"],
        cap_w=arrays["cap_w"],
        **agent,
    )
