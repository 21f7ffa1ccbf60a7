"""Workload classes from Kubernetes: which pod holds which GPU, through the kubelet's
PodResources API, and which class the pod's label names.

The kubelet serves `v1.PodResourcesLister/List` on `/var/lib/kubelet/pod-resources/kubelet.sock`
(gRPC). Its answer lists every pod on the node with its containers' devices; the NVIDIA device
plugin registers `nvidia.com/gpu` and, with its default `DEVICE_ID_STRATEGY=uuid`, the device ids
are GPU UUIDs, which is what NVML reports (`nvmlDeviceGetUUID`). The pod's label
`rheostat.io/class` (from the pod spec, listed by the API server) names its workload class; the
policy's `tiers.classes` maps the class to a Flex tier, as for any agent's classes. A GPU no pod
holds is `idle`; a pod without the label gets `default`.

This module maps the two answers onto the node's GPUs; it takes them as the JSON that `grpcurl`
and the API server print (camelCase, as protobuf's JSON mapping writes them), so the mapping is
tested on recorded responses. Everything is bounded and checked: a response is hostile input.
"""

from __future__ import annotations

from collections.abc import Mapping
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
