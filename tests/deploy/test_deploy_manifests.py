"""Kubernetes, the Dockerfile and docker-compose: what can be checked without running them.

Neither Docker nor a cluster runs here. These tests hold the files to the code they deploy: every
command the image, the Deployment or a compose service runs parses with the real `rheostat` CLI
parser; every embedded policy file passes the real policy loader and agrees with the ports, hosts
and secrets around it; probes, scrape annotations, selectors and mounts agree with each other.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from ruamel.yaml import YAML

from controller.cli import build_parser
from controller.policy_file import Policy, parse_policy
from controller.settings import KUBERNETES_SECRETS_DIR, load_secrets
from tests.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def parses_as_cli(argv: list[str]) -> None:
    """Fails the test with argparse's own message when the CLI would refuse these arguments."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`rheostat {' '.join(argv)}` is refused by the CLI (exit {exc.code})")
    assert callable(getattr(args, "func", None)), f"`rheostat {' '.join(argv)}` runs nothing"


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        obj = load_yaml(path)
        objects[obj["kind"]] = obj
    return objects


def policy_from_configmap(tmp_path: Path) -> Policy:
    data = k8s_objects()["ConfigMap"]["data"]
    for key, text in data.items():
        (tmp_path / key).write_text(text)
    return parse_policy(data["policy.yaml"], source="configmap policy.yaml", base_dir=tmp_path)


# ------------------------------------------------------------------------------ Kubernetes


def test_k8s_has_every_required_object_in_one_namespace() -> None:
    objects = k8s_objects()
    assert set(objects) == {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "PodMonitor",
        "PrometheusRule",
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    namespace = objects["Namespace"]["metadata"]["name"]
    for kind, obj in objects.items():
        if kind not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:  # cluster-scoped
            assert obj["metadata"]["namespace"] == namespace, kind
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_deployment_runs_one_controller_with_probes_on_livez_and_readyz() -> None:
    deployment = k8s_objects()["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"  # two controllers must never command at once
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    parses_as_cli(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]


def test_configmap_policy_is_valid_and_matches_the_deployment(tmp_path: Path) -> None:
    objects = k8s_objects()
    policy = policy_from_configmap(tmp_path)
    pod_spec = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    metrics = policy.config.metrics
    assert metrics.port == ports["metrics"]
    assert metrics.host == "0.0.0.0"  # probes and scrapes come from outside the pod
    # The policy file the args name is the ConfigMap's key, mounted where the args look.
    config_path = Path(container["args"][container["args"].index("--policy") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    policy_volume = next(
        name
        for name, v in volumes.items()
        if v.get("configMap", {}).get("name") == "rheostat-policy"
    )
    assert str(config_path.parent) == mounts[policy_volume]
    assert config_path.name in objects["ConfigMap"]["data"]
    # The policy names no password (nor where one is): that comes from the secrets directory.
    mqtt = policy.config.mqtt
    assert (mqtt.username, mqtt.password, mqtt.password_env, mqtt.password_file) == (
        "rheostat-controller",
        None,
        None,
        None,
    )
    assert "RHEOSTAT_MQTT_PASSWORD" not in {e["name"] for e in container.get("env", [])}
    tls = policy.config.mqtt.tls
    assert tls is not None
    assert tls.ca_file is not None
    assert any(str(tls.ca_file).startswith(path + "/") for path in mounts.values())


def test_the_password_secret_is_mounted_where_the_controller_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod_spec = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    secrets_dir = str(KUBERNETES_SECRETS_DIR)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == secrets_dir]
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "rheostat-mqtt"
    # The key `kubectl create secret ... --from-literal=password=` makes, and 0440 for the fsGroup
    # the pod runs as (ruamel reads YAML 1.2, where 0440 would be decimal: it is written as 288).
    assert secret["defaultMode"] == 0o440
    assert pod_spec["securityContext"]["fsGroup"] == pod_spec["securityContext"]["runAsGroup"]
    (item,) = secret["items"]
    assert item["key"] == "password"
    # What the kubelet writes there, read through the controller's own settings.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / item["path"]).write_text("s3cret\n")
    for name in ("RHEOSTAT_MQTT_PASSWORD", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RHEOSTAT_SECRETS_DIR", str(secrets))
    password = load_secrets().mqtt_password
    assert password is not None
    assert password.get_secret_value() == "s3cret"


def test_agent_daemonset_follows_the_device_plugin_conventions_with_least_privilege(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.config import load_agent_config

    objects = k8s_objects()
    daemonset = objects["DaemonSet"]
    spec = daemonset["spec"]
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    pod_spec = pod["spec"]
    assert pod_spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec[
        "tolerations"
    ]
    # Its service account may list pods (their class labels) and do nothing else.
    account = objects["ServiceAccount"]["metadata"]["name"]
    assert pod_spec["serviceAccountName"] == account
    assert objects["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}
    ]
    binding = objects["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == objects["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "rheostat"}
    ]
    (container,) = pod_spec["containers"]
    parses_as_cli(container["args"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert mounts["pod-resources"]["readOnly"] is True
    assert volumes["pod-resources"]["hostPath"]["path"] == mounts["pod-resources"]["mountPath"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    assert env["RHEOSTAT_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # It sees every GPU without taking one from the scheduler.
    for kind in ("requests", "limits"):
        assert "nvidia.com/gpu" not in container["resources"].get(kind, {})
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    # Its file is the ConfigMap's agent.yaml; the node's rack comes from nodes.yaml by node name.
    data = objects["ConfigMap"]["data"]
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    assert config_path.name in data
    for key, text in data.items():
        (tmp_path / key).write_text(text.replace("/etc/rheostat/", f"{tmp_path}/"))
    monkeypatch.setenv("RHEOSTAT_NODE", "gpu-b02")
    config = load_agent_config(tmp_path / config_path.name)
    assert (config.rack, config.first_gpu, config.rack_gpus) == ("r00001", 8, 32)
    assert config.pods is not None
    assert Path(config.pods.socket).parent == Path(mounts["pod-resources"]["mountPath"])
    assert config.mqtt.password_env in env
    rack = daemonset["metadata"]["labels"]["rheostat.io/rack"]
    assert pod_spec["nodeSelector"]["rheostat.io/rack"] == rack
    assert rack in env[config.mqtt.password_env]["valueFrom"]["secretKeyRef"]["name"]
    # The controller's policy names the same node inventory.
    policy = policy_from_configmap(tmp_path)
    assert policy.inventory is not None
    assert policy.inventory.by_host["gpu-b02"].rack == "r00001"


def test_service_and_disruption_budget_select_the_controller_pod() -> None:
    objects = k8s_objects()
    pod = objects["Deployment"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    service = objects["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} <= port_names
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_kubernetes_scrape_config_keeps_the_rheostat_job() -> None:
    """Debian's Prometheus is built without Kubernetes discovery, so promtool cannot check this."""
    config = load_yaml(DEPLOY / "prometheus" / "prometheus-kubernetes.yml")
    main = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == main["rule_files"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "rheostat"
    labels = k8s_objects()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep"
    assert keep["regex"] == labels["app.kubernetes.io/name"]


# ------------------------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines]


def test_image_runs_the_rheostat_cli() -> None:
    steps = dockerfile_instructions()
    entrypoint = json.loads(next(arg for op, arg in steps if op == "ENTRYPOINT"))
    command = json.loads(next(arg for op, arg in steps if op == "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["rheostat"]
    assert "rheostat" in scripts
    parses_as_cli(command)
    # The image's Python satisfies the package's requirement.
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    images = [arg for op, arg in steps if op == "FROM"]
    for image in images:
        version = re.search(r"python:(\d+\.\d+)", image)
        assert version, image
        assert tuple(map(int, version.group(1).split("."))) >= tuple(
            map(int, requires.removeprefix(">=").split("."))
        )
    assert any(op == "USER" and not arg.startswith("0") for op, arg in steps)


def test_image_copies_only_paths_that_exist() -> None:
    for op, arg in dockerfile_instructions():
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _dest = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_image_installs_the_extras_it_needs_and_no_bench() -> None:
    """The wheel step names the `openadr` extra (a site's policy may configure the VEN) and only
    extras pyproject declares; `bench/` is not packaged, so nothing copies it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (wheel,) = [arg for op, arg in dockerfile_instructions() if op == "RUN" and "pip wheel" in arg]
    target = re.search(r"'\.\[([a-z,]+)\]'", wheel)
    assert target, wheel
    extras = set(target.group(1).split(","))
    assert "openadr" in extras
    assert extras <= set(project["project"]["optional-dependencies"]) - {"dev"}
    packaged = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    for op, arg in dockerfile_instructions():
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _dest = arg.split()
            for source in sources:
                path = source.rstrip("/")
                assert path in packaged or (ROOT / path).is_file(), source


# ------------------------------------------------------------------------------ docker compose


def compose() -> dict[str, Any]:
    config: dict[str, Any] = load_yaml(DEPLOY / "docker-compose.yml")
    return config


def test_compose_has_the_whole_stack() -> None:
    # No CLI command runs simulated racks alone, so `rheostat demo` is the controller and the
    # simulated racks in one service.
    assert set(compose()["services"]) == {"mosquitto", "rheostat", "prometheus", "grafana"}


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_compose_commands_parse_with_the_cli() -> None:
    images = [
        s for s in compose()["services"].values() if s.get("image", "").startswith("rheostat:")
    ]
    assert images
    for service in images:
        parses_as_cli(service["command"])


def test_compose_demo_reaches_the_broker_and_prometheus_reaches_it(tmp_path: Path) -> None:
    services = compose()["services"]
    args = build_parser().parse_args(services["rheostat"]["command"])
    broker = urlparse(args.broker)
    assert broker.hostname in services
    broker_conf = (DEPLOY / "compose" / "mosquitto.conf").read_text()
    assert re.search(rf"^listener {broker.port}\b", broker_conf, re.MULTILINE)
    # The demo's metrics server listens on loopback: Prometheus shares its network namespace.
    assert services["rheostat"]["network_mode"] == "service:prometheus"
    prometheus = load_yaml(DEPLOY / "compose" / "prometheus.yml")
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "rheostat"]
    assert job["static_configs"][0]["targets"] == [f"localhost:{args.metrics_port}"]
    assert f"127.0.0.1:{args.metrics_port}:{args.metrics_port}" in services["prometheus"]["ports"]
    # promtool on the compose config, laid out as the container sees it (rules beside it).
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(DEPLOY / "prometheus" / "rules", tmp_path / "rules")
    result = subprocess.run(
        [require_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_gets_the_prometheus_url_the_datasource_reads() -> None:
    grafana = compose()["services"]["grafana"]
    datasource = load_yaml(DEPLOY / "grafana/provisioning/datasources/rheostat.yml")
    (source,) = datasource["datasources"]
    variable = re.fullmatch(r"\$\{(\w+)\}", source["url"])
    assert variable
    assert grafana["environment"][variable.group(1)] == "http://prometheus:9090"
