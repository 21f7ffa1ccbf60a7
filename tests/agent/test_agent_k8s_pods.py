"""Pods to GPUs to workload classes, on recorded PodResources and PodList answers."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import pytest

from agent.k8s_pods import (
    PodClasses,
    ProtobufError,
    decode_message,
    gpu_classes,
    gpu_pods,
    list_pod_resources,
    pod_labels,
)

DATA = Path(__file__).parent / "data"
UUIDS = tuple(f"GPU-6c1a0d2e-000{i}-4a7e-9b21-00000000000{i}" for i in range(5))


def test_recorded_answers_map_each_gpu_to_its_pods_class():
    held = gpu_pods(json.loads((DATA / "podresources-list.json").read_text()))
    assert held[UUIDS[2]] == ("research", "train-job-0")
    assert "mlx5_0" not in held  # another device plugin's resource
    labels = pod_labels(json.loads((DATA / "pods.json").read_text()))
    classes, idx = gpu_classes(UUIDS, held, labels, default="unknown")
    assert [classes[i] for i in idx] == [
        "inference",
        "inference",
        "training",
        "unknown",  # its label is no valid class name
        "idle",  # no pod holds GPU 4
    ]


def test_hostile_or_empty_answers_give_idle_gpus():
    for garbage in (None, [], {"podResources": "x"}, {"podResources": [1, {"name": 2}]}):
        assert gpu_pods(garbage) == {}
    assert pod_labels({"items": [{"metadata": {"name": "a", "namespace": "b", "labels": 5}}]}) == {
        ("b", "a"): {}
    }
    classes, idx = gpu_classes(UUIDS[:2], {}, {}, default="unknown")
    assert classes == ("idle",)
    assert idx.tolist() == [0, 0]


# ---------------------------------------------------------------- over the wire, for real
def _key(number: int, wire_type: int) -> bytes:
    return _varint_bytes(number << 3 | wire_type)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint_bytes(len(payload)) + payload


def encode_answer(answer: dict) -> bytes:
    """The recorded JSON answer as the kubelet sends it (protobuf), with fields the decoder must
    skip: CPU ids (packed varints), a topology message, a varint."""
    out = b""
    for pod in answer["podResources"]:
        body = _field(1, pod["name"].encode()) + _field(2, pod["namespace"].encode())
        for container in pod.get("containers", []):
            c = _field(1, container["name"].encode())
            for device in container.get("devices", []):
                d = _field(1, device["resourceName"].encode())
                for uuid in device.get("deviceIds", []):
                    d += _field(2, uuid.encode())
                d += _field(3, _field(1, _key(1, 0) + b"\x01"))  # topology { nodes { id: 1 } }
                c += _field(2, d)
            c += _field(3, b"\x02\x03") + _key(9, 0) + b"\x05"
            body += _field(3, c)
        out += _field(1, body)
    return out


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[str]:
    """A real gRPC server on a unix socket answering `v1.PodResourcesLister/List`."""
    import grpc

    answer = encode_answer(json.loads((DATA / "podresources-list.json").read_text()))

    def list_pods(request: bytes, context: object) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "v1.PodResourcesLister",
        {
            "List": grpc.unary_unary_rpc_method_handler(
                list_pods, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    socket_path = str(tmp_path / "kubelet.sock")
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield socket_path
    finally:
        server.stop(None)


@pytest.fixture
def api_server() -> Iterator[str]:
    """A real HTTP server answering the pod list for node gpu-a01 only."""
    pods = (DATA / "pods.json").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            ok = self.path.startswith("/api/v1/pods?") and query == {
                "fieldSelector": ["spec.nodeName=gpu-a01"]
            }
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(pods if ok else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_kubelet_answer_over_grpc_decodes_as_recorded(kubelet: str):
    recorded = json.loads((DATA / "podresources-list.json").read_text())
    assert gpu_pods(list_pod_resources(kubelet)) == gpu_pods(recorded)


def test_pod_classes_refresh_from_the_kubelet_and_the_api_server(kubelet: str, api_server: str):
    source = PodClasses(
        UUIDS, node="gpu-a01", default="unknown", socket_path=kubelet, api_url=api_server
    )
    source.refresh()
    classes, idx = source()
    assert [classes[i] for i in idx] == ["inference", "inference", "training", "unknown", "idle"]
    broken = PodClasses(UUIDS, node="gpu-a01", default="unknown", socket_path="/nonexistent")
    broken.refresh()  # no kubelet: the default class stays, the failure is counted
    assert broken.failures == 1
    assert broken()[0] == ("unknown",)


def test_garbage_protobuf_is_refused():
    with pytest.raises(ProtobufError):
        decode_message(b"\x0a\xff\xff\xff\xff\x0f")  # a length past the end
    with pytest.raises(ProtobufError):
        decode_message(b"\x0b")  # wire type 3 (groups) is not in this API
