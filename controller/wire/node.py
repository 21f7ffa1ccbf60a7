"""Node telemetry: one server's GPUs, node agent -> controller on `telemetry/<rack>/<node>` (QoS 0).

A node message carries the node's GPUs in on-host index order with the identities that join with
DCGM (hostname, UUID, PCI bus id, NVML name, on-host index); `controller.nodes` assembles a rack's
arrays from its nodes. Agents echo the acceptance state of the commands they receive. Decoding
raises `TelemetryError` with the reason it is counted under; nothing half-valid gets out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson
from numpy.typing import NDArray

from controller.wire.checks import (
    check_range,
    float_array,
    is_id,
    is_number,
    is_safe_int,
    load_object,
    number,
)
from controller.wire.protocol import (
    COMMAND_REJECT_REASONS,
    GPU_FIELD_RANGES,
    MAX_ID_CHARS,
    PROTOCOL_VERSION,
    FloatArray,
)
from policies.errors import TelemetryError

#: A server has at most this many GPUs in a node message.
MAX_NODE_GPUS: Final = 64
MAX_NODE_PAYLOAD_BYTES: Final = 64 * 1024
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
    if not all(x is None or is_number(x) for x in raw):
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
    obj = load_object(payload, limit=MAX_NODE_PAYLOAD_BYTES, rack=rack)
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
    ts = number(obj, "ts", where)
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
        arr = _nullable_array(obj, key, where) if key in _NULLABLE else float_array(obj, key, where)
        if arr.size != n:
            raise TelemetryError("wrong_length", f"{key} has {arr.size} of {n}", rack=where)
        lo, hi = (GPU_FIELD_RANGES | NODE_EXTRA_RANGES)[key]
        check_range(key, arr[~np.isnan(arr)] if key in _NULLABLE else arr, lo, hi, where)
        arrays[key] = arr
    classes = obj.get("classes")
    if (
        not isinstance(classes, list)
        or not 0 < len(classes) <= MAX_NODE_GPUS
        or not all(isinstance(c, str) and 0 < len(c) <= MAX_ID_CHARS for c in classes)
    ):
        raise TelemetryError("malformed", "classes must list 1-64 short strings", rack=where)
    class_idx = float_array(obj, "class_idx", where)
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
        node_power_w = number(obj, "node_power_w", where)
        check_range("node_power_w", np.array([node_power_w]), *NODE_POWER_RANGE_W, where)
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
