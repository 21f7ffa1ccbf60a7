"""deploy/k8s/: Prometheus Operator objects valid against their CRD schemas and in step with the
rule files and the Deployment; the event store's volume where the daemon writes it.

The schemas are the monitoring.coreos.com/v1 CRDs' OpenAPI schemas (tests/deploy/crd_schemas.py
says which fields and from where), checked with `jsonschema`, as the API server would before
admitting the objects. No cluster runs here.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from ruamel.yaml import YAML

from controller.config import DemandResponseSection
from controller.grid.store import resolve_store_path
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.prometheusrule import TARGET, prometheus_rule, render, rule_groups

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((K8S / name).read_text())
    return data


def validate(obj: dict[str, Any]) -> None:
    Draft202012Validator(SCHEMAS[obj["kind"]]).validate(obj)


@pytest.mark.parametrize("name", ["podmonitor.yaml", "prometheusrule.yaml"])
def test_monitoring_objects_match_their_crd_schemas(name: str) -> None:
    Draft202012Validator.check_schema(SCHEMAS[load(name)["kind"]])
    validate(load(name))


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        ("podmonitor.yaml", ("spec", "podMetricEndpoints"), []),  # misspelt: would be pruned
        ("podmonitor.yaml", ("spec", "podMetricsEndpoints", 0, "interval"), "5 seconds"),
        ("prometheusrule.yaml", ("spec", "groups", 0, "rules", 0, "for"), "1 minute"),
        ("prometheusrule.yaml", ("spec", "groups", 0, "rules", 0, "severity"), "critical"),
    ],
)
def test_the_schemas_refuse_what_the_api_server_would(
    name: str, path: tuple[str | int, ...], value: object
) -> None:
    obj = copy.deepcopy(load(name))
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        validate(obj)


def test_prometheus_rule_carries_the_rule_files_groups() -> None:
    shipped = load("prometheusrule.yaml")
    assert shipped == prometheus_rule()
    assert shipped["spec"]["groups"] == rule_groups()
    assert TARGET.read_text() == render()  # regenerate: python -m tests.deploy.prometheusrule
    # `groups` is a list-map keyed by name in the CRD: the API server refuses a repeated name.
    names = [group["name"] for group in shipped["spec"]["groups"]]
    assert len(names) == len(set(names))


def test_pod_monitor_scrapes_the_controller_pods_under_the_job_alerts_select() -> None:
    monitor, deployment = load("podmonitor.yaml"), load("deployment.yaml")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]
    job = labels[monitor["spec"]["jobLabel"]]
    selected = set(re.findall(r'job="([^"]+)"', (K8S / "prometheusrule.yaml").read_text()))
    assert selected == {job}


def test_the_event_store_lands_on_the_persistent_volume() -> None:
    deployment, claim = load("deployment.yaml"), load("pvc.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    state = env["STATE_DIRECTORY"]
    mount = mounts[state]
    assert not mount.get("readOnly", False)
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # one pod, replaced by Recreate
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    # The pod's user can write the volume, and the default store path resolves onto it.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    config_dir = Path("/etc/rheostat")
    store = resolve_store_path(DemandResponseSection().store_path, config_dir, env)
    assert store.parent == Path(state)
