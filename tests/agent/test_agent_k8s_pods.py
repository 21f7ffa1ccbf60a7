"""Pods to GPUs to workload classes, on recorded PodResources and PodList answers."""

from __future__ import annotations

import json
from pathlib import Path

from agent.k8s_pods import gpu_classes, gpu_pods, pod_labels

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
