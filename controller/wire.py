"""Wire protocol v1: the JSON messages racks and the controller exchange over MQTT.

Topics (QoS in brackets):
  rheostat/v1/<site>/telemetry/<rack>      agent -> controller [0], every period
  rheostat/v1/<site>/command/<rack>        controller -> agent [1]
  rheostat/v1/<site>/controller/status     controller, retained; its MQTT last will is `offline`

The simulator's agents and the daemon both use this module, so the two sides cannot drift apart.
Decoding validates everything a sender could get wrong (shape, finiteness, physical ranges, safe
integers, bounded strings) and raises `TelemetryError` (or `ProtocolError` for commands and
status) with the reason it is counted under; callers never see a half-valid message. Per-GPU
values travel as JSON arrays and land as numpy arrays, never as Python lists walked one GPU at a
time. Order comes from counters, never from clocks: telemetry carries the agent's boot id and a
sequence, commands carry (epoch, controller instance, seq) and agents apply `accept_command`.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeGuard

import numpy as np
import orjson
from numpy.typing import NDArray

from policies.errors import ProtocolError, TelemetryError

PROTOCOL_VERSION: Final = 1
TOPIC_ROOT: Final = "rheostat/v1"
#: Larger payloads are rejected before parsing: a 72-GPU rack's message is about 6 kB.
MAX_PAYLOAD_BYTES: Final = 256 * 1024

FloatArray = NDArray[np.float64]

#: Physical bounds per field: anything outside is a broken sensor or a broken agent. Units in names.
GPU_FIELD_RANGES: Final[dict[str, tuple[float, float]]] = {
    "power_w": (0.0, 3000.0),
    "sm_clock_mhz": (0.0, 5000.0),
    "util": (0.0, 1.0),
    "mem_util": (0.0, 1.0),
    "temp_c": (-40.0, 150.0),
    "cap_w": (0.0, 3000.0),
}
RACK_POWER_RANGE_W: Final = (0.0, 2.0e6)
#: Integers on the wire are JSON integers in [0, 2**53 - 1] ("safe integers": every one of them
#: survives a float64 round trip, so any JSON library on either side reads the same value).
MAX_SAFE_INT: Final = 2**53 - 1
#: Timestamps (Unix s) on the wire: finite, not negative, and before the year 5000. How far they
#: may be from the controller's own clock is the controller's check (`telemetry.max_clock_skew_s`).
TS_RANGE_S: Final = (0.0, 1.0e11)
#: Boot ids (agent) and controller instance ids: 1-64 characters of this set.
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Longest rack id accepted in a payload (the topic level names it too).
MAX_RACK_ID_CHARS: Final = 128
#: Workload-class names per telemetry message, and characters per name.
MAX_MESSAGE_CLASSES: Final = 256
MAX_CLASS_NAME_CHARS: Final = 64
#: A command's `ttl_s` lies in (0, MAX_TTL_S]. Units: s.
MAX_TTL_S: Final = 3600.0
#: Why an agent refuses a command; agents report cumulative counts per reason in telemetry.
COMMAND_REJECT_REASONS: Final = (
    "stale_epoch",
    "stale_seq",
    "wrong_rack",
    "wrong_length",
    "malformed",
    "out_of_range",
    "wrong_version",
)


#: Reconnect backoff for every client of the protocol (daemon and agents): the first retry after
#: RECONNECT_FIRST_S, each later one twice as long up to RECONNECT_MAX_S, jittered over the upper
#: half. Units: s. With it every rack has a fresh command within a few seconds of a broker's
#: return, far inside any command's TTL (an uncapped `1.5 ** attempt` reaches a minute).
RECONNECT_FIRST_S: Final = 0.25
RECONNECT_MAX_S: Final = 2.0


def reconnect_delay_s(attempt: int) -> float:
    """Jittered, capped delay before reconnect `attempt` (1-based). Units: s."""
    ceiling = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2.0 ** max(0, min(attempt, 16) - 1))
    return random.uniform(ceiling / 2, ceiling)  # jitter, not cryptography


def telemetry_topic(site: str, rack: str) -> str:
    return f"{TOPIC_ROOT}/{site}/telemetry/{rack}"


def telemetry_filter(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/telemetry/+"


def command_topic(site: str, rack: str) -> str:
    return f"{TOPIC_ROOT}/{site}/command/{rack}"


def command_filter(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/command/+"


def status_topic(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/controller/status"


def rack_from_topic(topic: str) -> str:
    """The last topic level, which names the rack on telemetry and command topics."""
    return topic.rsplit("/", 1)[-1]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """The controller's liveness, retained on the status topic."""

    state: Literal["online", "offline"]
    ts_s: float
    controller: str
    epoch: int = 0


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


def _load_object(payload: bytes, *, limit: int, rack: str | None) -> dict[str, Any]:
    if len(payload) > limit:
        raise TelemetryError("too_large", f"{len(payload)} bytes > {limit}", rack=rack)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise TelemetryError("malformed", f"not JSON: {exc}", rack=rack) from None
    if not isinstance(obj, dict):
        raise TelemetryError("malformed", "not a JSON object", rack=rack)
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise TelemetryError(
            "wrong_version", f"v={version!r}, expected {PROTOCOL_VERSION}", rack=rack
        )
    return obj


def _float_array(obj: dict[str, Any], key: str, rack: str | None) -> FloatArray:
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


def _number(obj: dict[str, Any], key: str, rack: str | None) -> float:
    raw = obj.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TelemetryError("malformed", f"{key} must be a number", rack=rack)
    try:
        return float(raw)
    except OverflowError:  # an integer too large for a float
        raise TelemetryError("malformed", f"{key} is out of float range", rack=rack) from None


def is_safe_int(value: object) -> TypeGuard[int]:
    """A JSON integer in [0, 2**53 - 1]; booleans are not integers here."""
    return type(value) is int and 0 <= value <= MAX_SAFE_INT


def is_id(value: object) -> TypeGuard[str]:
    """A boot or controller instance id: 1-64 characters of `[A-Za-z0-9._:-]`."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def _safe_int(obj: dict[str, Any], key: str, rack: str | None) -> int:
    raw = obj.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise TelemetryError("malformed", f"{key} must be an integer", rack=rack)
    if not 0 <= raw <= MAX_SAFE_INT:
        raise TelemetryError("out_of_range", f"{key} outside [0, 2**53 - 1]", rack=rack)
    return raw


def _timestamp(obj: dict[str, Any], key: str, rack: str | None) -> float:
    value = _number(obj, key, rack)
    if not math.isfinite(value):
        raise TelemetryError("non_finite", f"{key} must be finite", rack=rack)
    lo, hi = TS_RANGE_S
    if not lo <= value <= hi:
        raise TelemetryError("out_of_range", f"{key} outside [{lo}, {hi}]", rack=rack)
    return value


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
            out[key] = _safe_int(obj, key, rack)
    rejected = obj.get("cmd_rejected")
    if rejected is not None:
        if not isinstance(rejected, dict) or not set(rejected) <= set(COMMAND_REJECT_REASONS):
            raise TelemetryError(
                "malformed", f"cmd_rejected must map reasons {COMMAND_REJECT_REASONS}", rack=rack
            )
        out["cmd_rejected"] = {key: _safe_int(rejected, key, rack) for key in rejected}
    fallback = obj.get("fallback", False)
    if not isinstance(fallback, bool):
        raise TelemetryError("malformed", "fallback must be true or false", rack=rack)
    out["fallback"] = fallback
    return out


def _check_classes(classes: list[str], rack: str | None) -> None:
    if len(classes) > MAX_MESSAGE_CLASSES:
        raise TelemetryError(
            "out_of_range", f"{len(classes)} classes > {MAX_MESSAGE_CLASSES}", rack=rack
        )
    if any(len(c) > MAX_CLASS_NAME_CHARS for c in classes):
        raise TelemetryError(
            "out_of_range", f"a class name is over {MAX_CLASS_NAME_CHARS} chars", rack=rack
        )


def _check_range(name: str, arr: FloatArray, lo: float, hi: float, rack: str | None) -> None:
    if not np.all(np.isfinite(arr)):
        raise TelemetryError("non_finite", f"{name} holds NaN or infinity", rack=rack)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise TelemetryError("out_of_range", f"{name} outside [{lo}, {hi}]", rack=rack)


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
    obj = _load_object(payload, limit=max_bytes, rack=rack)
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
    seq = _safe_int(obj, "seq", body_rack)
    ts = _number(obj, "ts", body_rack)
    arrays = {key: _float_array(obj, key, body_rack) for key in GPU_FIELD_RANGES}
    classes = obj.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise TelemetryError("malformed", "classes must be an array of strings", rack=body_rack)
    _check_classes(classes, body_rack)
    class_idx_f = _float_array(obj, "class_idx", body_rack)
    rack_power = _number(obj, "rack_power_w", body_rack)

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
        _check_range(key, arrays[key], lo, hi, body_rack)
    _check_range("rack_power_w", np.array([rack_power]), *RACK_POWER_RANGE_W, body_rack)
    _check_range("ts", np.array([ts]), *TS_RANGE_S, body_rack)
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
        body["safe_cap_w"] = _round_down(cmd.safe_cap_w)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _round_down(safe_cap_w: FloatArray) -> FloatArray:
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
    safe = None if safe_cap_w is None else _round_down(safe_cap_w)
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
    try:
        obj = _load_object(payload, limit=MAX_PAYLOAD_BYTES, rack=rack)
        body_rack = obj.get("rack")
        if not isinstance(body_rack, str) or not body_rack or len(body_rack) > MAX_RACK_ID_CHARS:
            raise TelemetryError("malformed", "rack must be a rack id", rack=rack)
        if rack is not None and body_rack != rack:
            raise ProtocolError(f"command for rack {body_rack!r}", rack=rack, reason="wrong_rack")
        epoch = _safe_int(obj, "epoch", rack)
        ctl = obj.get("ctl")
        if not is_id(ctl):
            raise TelemetryError(
                "malformed", "ctl must be 1-64 chars of [A-Za-z0-9._:-]", rack=rack
            )
        seq = _safe_int(obj, "seq", rack)
        issued = _timestamp(obj, "issued_at", rack)
        ttl = _number(obj, "ttl_s", rack)
        caps = _float_array(obj, "cap_w", rack)
        clocks = _float_array(obj, "sm_clock_max_mhz", rack)
        if caps.size != clocks.size or (expected_gpus is not None and caps.size != expected_gpus):
            raise TelemetryError("wrong_length", "cap_w and sm_clock_max_mhz lengths", rack=rack)
        safe = None if obj.get("safe_cap_w") is None else _float_array(obj, "safe_cap_w", rack)
        if safe is not None:
            if safe.size != caps.size:
                raise TelemetryError("wrong_length", "safe_cap_w and cap_w differ", rack=rack)
            _check_range("safe_cap_w", safe, 0.0, GPU_FIELD_RANGES["cap_w"][1], rack)
        _check_range("cap_w", caps, 0.0, GPU_FIELD_RANGES["cap_w"][1], rack)
        _check_range("sm_clock_max_mhz", clocks, 0.0, GPU_FIELD_RANGES["sm_clock_mhz"][1], rack)
        if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL_S):
            raise TelemetryError("out_of_range", f"ttl_s outside (0, {MAX_TTL_S}]", rack=rack)
    except TelemetryError as exc:
        reason = "out_of_range" if exc.reason == "non_finite" else exc.reason
        if reason not in COMMAND_REJECT_REASONS:  # too_large: a malformed command
            reason = "malformed"
        raise ProtocolError(f"bad command: {exc.message}", rack=rack, reason=reason) from None
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
    """Parse the controller's retained status; `ProtocolError` for anything else."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("status too large")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProtocolError("status is not JSON") from None
    if not isinstance(obj, dict) or obj.get("state") not in ("online", "offline"):
        raise ProtocolError("status must be an object with state online|offline")
    ts = obj.get("ts", 0.0)
    controller = obj.get("controller", "")
    epoch = obj.get("epoch", 0)
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise ProtocolError("status ts must be a number")
    try:
        ts_s = float(ts)
    except OverflowError:
        raise ProtocolError("status ts out of range", reason="out_of_range") from None
    if not TS_RANGE_S[0] <= ts_s <= TS_RANGE_S[1]:
        raise ProtocolError("status ts out of range", reason="out_of_range")
    if not isinstance(controller, str) or len(controller) > 64:
        raise ProtocolError("status controller must be an id of at most 64 chars")
    if not is_safe_int(epoch):
        raise ProtocolError("status epoch must be a safe integer", reason="out_of_range")
    return Status(state=obj["state"], ts_s=ts_s, controller=controller, epoch=epoch)


# ---------------------------------------------------------------- node level (one server's agent)
#
#   rheostat/v1/<site>/telemetry/<rack>/<node>   node agent -> controller [0], every period
#   rheostat/v1/<site>/command/<rack>/<node>     controller -> node agent [1] (optional: an agent
#                                                also takes its slice of its rack's command)
#
# A node message carries the node's GPUs in on-host index order with the identities that join
# with DCGM (hostname, UUID, PCI bus id, NVML name, on-host index); `controller.nodes` assembles a
# rack's arrays from its nodes. Agents echo the acceptance state of the commands they receive.

#: A server has at most this many GPUs in a node message.
MAX_NODE_GPUS: Final = 64
MAX_NODE_PAYLOAD_BYTES: Final = 64 * 1024
ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
MAX_ID_CHARS: Final = 64
#: Longest hostname (RFC 1035), UUID, PCI bus id and GPU name strings accepted.
MAX_HOSTNAME_CHARS: Final = 253
MAX_GPU_STRING_CHARS: Final = 96
#: Per-GPU fields a node reports beyond the rack message's, with their physical bounds.
NODE_EXTRA_RANGES: Final[dict[str, tuple[float, float]]] = {
    "power_instant_w": (0.0, 3000.0),
    "energy_j": (0.0, 1.0e15),
    "cap_cmd_w": (0.0, 3000.0),
    "sm_clock_max_mhz": (0.0, 5000.0),
    "min_cap_w": (0.0, 3000.0),
    "max_cap_w": (0.0, 3000.0),
}
NODE_POWER_RANGE_W: Final = (0.0, 1.0e5)


def _is_number(value: object) -> TypeGuard[int | float]:
    return type(value) in (int, float)


def node_telemetry_topic(site: str, rack: str, node: str) -> str:
    return f"{TOPIC_ROOT}/{site}/telemetry/{rack}/{node}"


def node_telemetry_filter(site: str) -> str:
    return f"{TOPIC_ROOT}/{site}/telemetry/+/+"


def node_command_topic(site: str, rack: str, node: str) -> str:
    return f"{TOPIC_ROOT}/{site}/command/{rack}/{node}"


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class NodeTelemetry:
    """One server's readings and identities. Per-GPU arrays share one length, in on-host order.

    NaN in `power_instant_w`, `energy_j` and `cap_cmd_w` (null on the wire) means the GPU has no
    such reading, or no cap was commanded yet. `node_power_w` is the server's own meter (IPMI
    DCMI, Redfish), NaN without one. Units in names.
    """

    rack: str
    node: str
    hostname: str
    seq: int
    ts_s: float
    boot: str
    gpu_index: tuple[int, ...]
    uuid: tuple[str, ...]
    pci_bus_id: tuple[str, ...]
    name: tuple[str, ...]
    power_w: FloatArray
    power_instant_w: FloatArray
    energy_j: FloatArray
    sm_clock_mhz: FloatArray
    util: FloatArray
    mem_util: FloatArray
    temp_c: FloatArray
    cap_w: FloatArray
    cap_cmd_w: FloatArray
    sm_clock_max_mhz: FloatArray
    min_cap_w: FloatArray
    max_cap_w: FloatArray
    classes: tuple[str, ...]
    class_idx: NDArray[np.int64]
    node_power_w: float
    cmd_epoch: int
    cmd_seq: int
    cmd_rejected: dict[str, int]
    fallback: bool

    @property
    def n_gpus(self) -> int:
        return int(self.power_w.size)


_NODE_FLOAT_KEYS: Final = (*GPU_FIELD_RANGES, *NODE_EXTRA_RANGES)
_NULLABLE: Final = frozenset({"power_instant_w", "energy_j", "cap_cmd_w"})


def _null_as_nan(arr: FloatArray) -> list[float | None]:
    return [None if np.isnan(x) else float(x) for x in arr.tolist()]


def encode_node_telemetry(msg: NodeTelemetry) -> bytes:
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "rack": msg.rack,
        "node": msg.node,
        "hostname": msg.hostname,
        "seq": msg.seq,
        "ts": msg.ts_s,
        "boot": msg.boot,
        "gpu_index": list(msg.gpu_index),
        "uuid": list(msg.uuid),
        "pci_bus_id": list(msg.pci_bus_id),
        "name": list(msg.name),
        "classes": list(msg.classes),
        "class_idx": msg.class_idx,
        "node_power_w": None if np.isnan(msg.node_power_w) else msg.node_power_w,
        "cmd_epoch": msg.cmd_epoch,
        "cmd_seq": msg.cmd_seq,
        "cmd_rejected": {k: v for k, v in msg.cmd_rejected.items() if v},
        "fallback": msg.fallback,
    }
    for key in _NODE_FLOAT_KEYS:
        arr = getattr(msg, key)
        body[key] = _null_as_nan(arr) if key in _NULLABLE else arr
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _strings(obj: dict[str, Any], key: str, n: int, max_chars: int, where: str) -> tuple[str, ...]:
    raw = obj.get(key)
    if not isinstance(raw, list) or len(raw) != n:
        raise TelemetryError("wrong_length", f"{key} must list {n} strings", rack=where)
    if not all(isinstance(s, str) and 0 < len(s) <= max_chars for s in raw):
        raise TelemetryError("malformed", f"{key} must hold strings of 1-{max_chars}", rack=where)
    return tuple(raw)


def _nullable_array(obj: dict[str, Any], key: str, where: str) -> FloatArray:
    raw = obj.get(key)
    if not isinstance(raw, list):
        raise TelemetryError("malformed", f"{key} must be an array", rack=where)
    if not all(x is None or (type(x) in (int, float)) for x in raw):
        raise TelemetryError("malformed", f"{key} must hold numbers or null", rack=where)
    try:
        return np.array([np.nan if x is None else x for x in raw], dtype=np.float64)
    except OverflowError:
        raise TelemetryError("malformed", f"{key} is out of float range", rack=where) from None


def decode_node_telemetry(
    payload: bytes, *, rack: str | None = None, node: str | None = None
) -> NodeTelemetry:
    """Parse and validate one node message (rack and node from the topic must match the body).

    Raises `TelemetryError` with the reason it is counted under; nothing half-valid gets out.
    """
    obj = _load_object(payload, limit=MAX_NODE_PAYLOAD_BYTES, rack=rack)
    body_rack, body_node = obj.get("rack"), obj.get("node")
    where = f"{rack}/{node}"
    if not is_id(body_rack) or not is_id(body_node):
        raise TelemetryError("malformed", "rack and node must be ids", rack=where)
    if (rack is not None and body_rack != rack) or (node is not None and body_node != node):
        raise TelemetryError("malformed", "rack or node differs from the topic", rack=where)
    hostname = obj.get("hostname")
    if not isinstance(hostname, str) or not 0 < len(hostname) <= MAX_HOSTNAME_CHARS:
        raise TelemetryError("malformed", "hostname must be 1-253 chars", rack=where)
    if not is_id(obj.get("boot")):
        raise TelemetryError("malformed", "boot must be an id", rack=where)
    for key in ("seq", "cmd_epoch", "cmd_seq"):
        if not is_safe_int(obj.get(key)):
            raise TelemetryError("out_of_range", f"{key} must be a safe integer", rack=where)
    ts = _number(obj, "ts", where)
    fallback = obj.get("fallback")
    if not isinstance(fallback, bool):
        raise TelemetryError("malformed", "fallback must be true or false", rack=where)
    rejected = obj.get("cmd_rejected")
    if not isinstance(rejected, dict) or not set(rejected) <= set(COMMAND_REJECT_REASONS):
        raise TelemetryError("malformed", "cmd_rejected must map known reasons", rack=where)
    if not all(is_safe_int(v) for v in rejected.values()):
        raise TelemetryError("out_of_range", "cmd_rejected counts must be safe ints", rack=where)
    index = obj.get("gpu_index")
    if not isinstance(index, list) or not 0 < len(index) <= MAX_NODE_GPUS:
        raise TelemetryError("wrong_length", f"gpu_index must list 1-{MAX_NODE_GPUS}", rack=where)
    if not all(type(i) is int and 0 <= i < 1024 for i in index) or len(set(index)) != len(index):
        raise TelemetryError("out_of_range", "gpu_index must be distinct small ints", rack=where)
    n = len(index)
    arrays: dict[str, FloatArray] = {}
    for key in _NODE_FLOAT_KEYS:
        arr = (
            _nullable_array(obj, key, where) if key in _NULLABLE else _float_array(obj, key, where)
        )
        if arr.size != n:
            raise TelemetryError("wrong_length", f"{key} has {arr.size} of {n}", rack=where)
        lo, hi = (GPU_FIELD_RANGES | NODE_EXTRA_RANGES)[key]
        _check_range(key, arr[~np.isnan(arr)] if key in _NULLABLE else arr, lo, hi, where)
        arrays[key] = arr
    classes = obj.get("classes")
    if (
        not isinstance(classes, list)
        or not 0 < len(classes) <= MAX_NODE_GPUS
        or not all(isinstance(c, str) and 0 < len(c) <= MAX_ID_CHARS for c in classes)
    ):
        raise TelemetryError("malformed", "classes must list 1-64 short strings", rack=where)
    class_idx = _float_array(obj, "class_idx", where)
    if class_idx.size != n:
        raise TelemetryError("wrong_length", "class_idx has the wrong length", rack=where)
    if not (
        np.all(class_idx == np.floor(class_idx))
        and class_idx.min() >= 0
        and class_idx.max() < len(classes)
    ):
        raise TelemetryError("out_of_range", "class_idx must index classes", rack=where)
    node_power = obj.get("node_power_w")
    node_power_w = np.nan
    if node_power is not None:
        node_power_w = _number(obj, "node_power_w", where)
        _check_range("node_power_w", np.array([node_power_w]), *NODE_POWER_RANGE_W, where)
    if not np.isfinite(ts):
        raise TelemetryError("non_finite", "ts must be finite", rack=where)
    return NodeTelemetry(
        rack=body_rack,
        node=body_node,
        hostname=hostname,
        seq=obj["seq"],
        ts_s=ts,
        boot=obj["boot"],
        gpu_index=tuple(index),
        uuid=_strings(obj, "uuid", n, MAX_GPU_STRING_CHARS, where),
        pci_bus_id=_strings(obj, "pci_bus_id", n, MAX_GPU_STRING_CHARS, where),
        name=_strings(obj, "name", n, MAX_GPU_STRING_CHARS, where),
        classes=tuple(classes),
        class_idx=class_idx.astype(np.int64),
        node_power_w=node_power_w,
        cmd_epoch=obj["cmd_epoch"],
        cmd_seq=obj["cmd_seq"],
        cmd_rejected={k: int(v) for k, v in rejected.items()},
        fallback=fallback,
        **arrays,
    )


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
        body["safe_cap_w"] = _round_down(cmd.safe_cap_w)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _command_array(obj: dict[str, Any], key: str, size: int, hi: float, rack: str) -> FloatArray:
    raw = obj.get(key)
    if not isinstance(raw, list) or not all(type(x) in (int, float) for x in raw):
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
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandRejectedError("malformed", "payload too large", rack=rack)
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise CommandRejectedError("malformed", "not JSON", rack=rack) from None
    if not isinstance(obj, dict):
        raise CommandRejectedError("malformed", "not a JSON object", rack=rack)
    if obj.get("v") != PROTOCOL_VERSION:
        raise CommandRejectedError("wrong_version", f"v={obj.get('v')!r}", rack=rack)
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
    if not (_is_number(issued) and _is_number(ttl)):
        raise CommandRejectedError("malformed", "issued_at and ttl_s must be numbers", rack=rack)
    try:
        issued_s, ttl_s = float(issued), float(ttl)
    except OverflowError:
        raise CommandRejectedError(
            "out_of_range", "issued_at or ttl_s too large", rack=rack
        ) from None
    if not (math.isfinite(issued_s) and 0 < ttl_s <= 3600):
        raise CommandRejectedError("out_of_range", "ttl_s must be in (0, 3600]", rack=rack)
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
