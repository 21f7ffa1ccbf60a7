"""Workload classes from Kubernetes: which pod holds which GPU, through the kubelet's
PodResources API, and which class the pod's label names.

The kubelet serves `v1.PodResourcesLister/List` on `/var/lib/kubelet/pod-resources/kubelet.sock`
(gRPC). Its answer lists every pod on the node with its containers' devices; the NVIDIA device
plugin registers `nvidia.com/gpu` and, with its default `DEVICE_ID_STRATEGY=uuid`, the device ids
are GPU UUIDs, which is what NVML reports (`nvmlDeviceGetUUID`). The pod's label
`rheostat.io/class` (from the pod spec, listed by the API server) names its workload class; the
policy's `tiers.classes` maps the class to a Flex tier, as for any agent's classes. A GPU no pod
holds is `idle`; a pod without the label gets `default`.

The mapping takes both answers in the JSON form `grpcurl` and the API server print (camelCase, as
protobuf's JSON mapping writes them), so it is tested on recorded answers. `list_pod_resources`
asks the kubelet over its gRPC socket (the protobuf answer is decoded here, field by field, into
that same form: no generated code), and `list_node_pods` asks the API server for the node's pods
with the pod's service-account token (RBAC: `list` on `pods`, `deploy/k8s/`). `PodClasses` keeps
the mapping fresh for the agent's telemetry, refreshing it every `refresh_s` in a worker thread.
Everything is bounded and checked: an answer is hostile input.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from controller.wire import MAX_ID_CHARS, is_id

GPU_RESOURCE: Final = "nvidia.com/gpu"
CLASS_LABEL: Final = "rheostat.io/class"
IDLE_CLASS: Final = "idle"
MAX_PODS: Final = 10_000


def gpu_pods(response: Any) -> dict[str, tuple[str, str]]:
    """GPU UUID -> (namespace, pod) from a `ListPodResourcesResponse` in JSON form."""
    pods = response.get("podResources") if isinstance(response, Mapping) else None
    if not isinstance(pods, list):
        return {}
    held: dict[str, tuple[str, str]] = {}
    for pod in pods[:MAX_PODS]:
        if not isinstance(pod, Mapping):
            continue
        name, namespace = pod.get("name"), pod.get("namespace")
        if not isinstance(name, str) or not isinstance(namespace, str):
            continue
        containers = pod.get("containers")
        for container in containers if isinstance(containers, list) else ():
            devices = container.get("devices") if isinstance(container, Mapping) else None
            for device in devices if isinstance(devices, list) else ():
                if not isinstance(device, Mapping) or device.get("resourceName") != GPU_RESOURCE:
                    continue
                ids = device.get("deviceIds")
                for uuid in ids if isinstance(ids, list) else ():
                    if isinstance(uuid, str):
                        held[uuid] = (namespace, name)
    return held


def pod_labels(pod_list: Any) -> dict[tuple[str, str], dict[str, str]]:
    """(namespace, pod) -> labels from the API server's `PodList` (`GET /api/v1/pods`)."""
    items = pod_list.get("items") if isinstance(pod_list, Mapping) else None
    out: dict[tuple[str, str], dict[str, str]] = {}
    for item in items[:MAX_PODS] if isinstance(items, list) else ():
        meta = item.get("metadata") if isinstance(item, Mapping) else None
        if not isinstance(meta, Mapping):
            continue
        name, namespace, labels = meta.get("name"), meta.get("namespace"), meta.get("labels")
        if isinstance(name, str) and isinstance(namespace, str):
            out[(namespace, name)] = {
                k: v
                for k, v in (labels.items() if isinstance(labels, Mapping) else ())
                if isinstance(k, str) and isinstance(v, str)
            }
    return out


def gpu_classes(
    uuids: tuple[str, ...],
    held: Mapping[str, tuple[str, str]],
    labels: Mapping[tuple[str, str], Mapping[str, str]],
    *,
    default: str,
) -> tuple[tuple[str, ...], NDArray[np.int64]]:
    """Per-GPU workload classes in the agent's telemetry form (class names, index per GPU).

    A label value that is not a valid class name (1-64 chars of `[A-Za-z0-9._:-]`) counts as
    absent, so a pod cannot inject text into the controller's class table.
    """
    names: list[str] = []
    idx = np.zeros(len(uuids), np.int64)
    for i, uuid in enumerate(uuids):
        pod = held.get(uuid)
        if pod is None:
            name = IDLE_CLASS
        else:
            value = labels.get(pod, {}).get(CLASS_LABEL)
            name = value if is_id(value) and len(value) <= MAX_ID_CHARS else default
        if name not in names:
            names.append(name)
        idx[i] = names.index(name)
    return tuple(names), idx


# ---------------------------------------------------------------- the kubelet's PodResources API
POD_RESOURCES_SOCKET: Final = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD: Final = "/v1.PodResourcesLister/List"
MAX_ANSWER_BYTES: Final = 16 << 20
#: Field numbers of k8s.io/kubelet/pkg/apis/podresources/v1/api.proto, as JSON names.
_SCHEMA: Final[dict[str, dict[int, tuple[str, str | None]]]] = {
    "ListPodResourcesResponse": {1: ("podResources", "PodResources")},
    "PodResources": {1: ("name", None), 2: ("namespace", None), 3: ("containers", "Container")},
    "Container": {1: ("name", None), 2: ("devices", "ContainerDevices")},
    "ContainerDevices": {1: ("resourceName", None), 2: ("deviceIds", None)},
}
_REPEATED: Final = frozenset({"podResources", "containers", "devices", "deviceIds"})


class ProtobufError(ValueError):
    """The kubelet's answer is not the protobuf it should be."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode_message(
    data: bytes, kind: str = "ListPodResourcesResponse", depth: int = 0
) -> dict[str, Any]:
    """A protobuf message of `kind` as the dict protobuf's JSON mapping gives (known fields only;
    unknown ones, such as CPU ids, memory and topology, are skipped by their wire type)."""
    if depth > 8:
        raise ProtobufError("nested too deep")
    fields, pos = _SCHEMA[kind], 0
    out: dict[str, Any] = {}
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
            continue
        if wire_type in {1, 5}:
            pos += 8 if wire_type == 1 else 4
            continue
        if wire_type != 2:
            raise ProtobufError(f"wire type {wire_type}")
        size, pos = _varint(data, pos)
        chunk, pos = data[pos : pos + size], pos + size
        if pos > len(data):
            raise ProtobufError("truncated field")
        if number not in fields:
            continue
        name, sub = fields[number]
        value: Any = (
            decode_message(chunk, sub, depth + 1) if sub else chunk.decode("utf-8", "replace")
        )
        if name in _REPEATED:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


def list_pod_resources(socket_path: str = POD_RESOURCES_SOCKET, timeout_s: float = 5.0) -> Any:
    """The kubelet's `List` answer (JSON form); raises `OSError` when it cannot be had."""
    import grpc  # noqa: PLC0415 - only agents on Kubernetes need gRPC

    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary(
            LIST_METHOD,
            request_serializer=lambda _: b"",
            response_deserializer=lambda raw: raw,
        )
        try:
            raw = call(None, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise OSError(f"PodResources List failed: {exc.code()}") from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise OSError("PodResources answer too large")
    try:
        return decode_message(raw)
    except ProtobufError as exc:
        raise OSError(f"PodResources answer: {exc}") from None


# ---------------------------------------------------------------- the API server's pods
TOKEN_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def list_node_pods(node: str, *, api_url: str | None = None, timeout_s: float = 5.0) -> Any:
    """`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>` with the pod's own credentials
    (in-cluster); `api_url` (tests, or a proxy) overrides the in-cluster address and then sends
    no token. Raises `OSError` on failure."""
    query = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={node}"})
    headers = {"Accept": "application/json"}
    context = None
    if api_url is None:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if not host:
            raise OSError("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset)")
        api_url = f"https://{host}:{port}"
        headers["Authorization"] = "Bearer " + (TOKEN_DIR / "token").read_text().strip()
        context = ssl.create_default_context(cafile=str(TOKEN_DIR / "ca.crt"))
    if not api_url.startswith(("https://", "http://")):
        raise OSError("api_url must be http(s)")
    request = urllib.request.Request(f"{api_url}/api/v1/pods?{query}", headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:  # noqa: S310
        body = answer.read(MAX_ANSWER_BYTES + 1)
    if len(body) > MAX_ANSWER_BYTES:
        raise OSError("pod list too large")
    try:
        return json.loads(body)
    except ValueError:
        raise OSError("pod list is not JSON") from None


class PodClasses:
    """The agent's class source on Kubernetes: per-GPU classes from the node's pods, refreshed
    every `refresh_s` in a background thread; the last good mapping stays on a failed refresh."""

    def __init__(
        self,
        uuids: tuple[str, ...],
        *,
        node: str,
        default: str,
        refresh_s: float = 10.0,
        socket_path: str = POD_RESOURCES_SOCKET,
        api_url: str | None = None,
    ) -> None:
        self.uuids, self.node, self.default = uuids, node, default
        self.refresh_s, self.socket_path, self.api_url = refresh_s, socket_path, api_url
        self.failures = 0
        self._current: tuple[tuple[str, ...], NDArray[np.int64]] = (
            (default,),
            np.zeros(len(uuids), np.int64),
        )
        self._next_s = 0.0
        self._busy = threading.Lock()

    def refresh(self) -> None:
        """One refresh, in the caller's thread."""
        try:
            held = gpu_pods(list_pod_resources(self.socket_path))
            labels = pod_labels(list_node_pods(self.node, api_url=self.api_url))
        except OSError:
            self.failures += 1
            return
        self._current = gpu_classes(self.uuids, held, labels, default=self.default)

    def __call__(self) -> tuple[tuple[str, ...], NDArray[np.int64]]:
        now = time.monotonic()
        if now >= self._next_s and self._busy.acquire(blocking=False):
            self._next_s = now + self.refresh_s

            def run() -> None:
                try:
                    self.refresh()
                finally:
                    self._busy.release()

            threading.Thread(target=run, name="pod-classes", daemon=True).start()
        return self._current
