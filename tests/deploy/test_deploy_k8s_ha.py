"""deploy/k8s-ha/: the active/standby overlay agrees with the base, the policy, the broker's ACL
and its RBAC.

No cluster runs here; the files are held to the code: the overlay's policy passes the real loader
(failover budget included) and differs from the base only by its `ha` section, the Role grants
exactly the Lease calls `controller.ha.kubernetes` makes on the Lease the policy names, the
StatefulSet runs two replicas under the bound service account, each with a broker user the ACL
knows and a password of its own, and its container is the base Deployment's. Where `kubectl` is
installed, kustomize builds the overlay.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller.policy_file import parse_policy
from tests.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
HA = ROOT / "deploy" / "k8s-ha"
ACL = ROOT / "deploy" / "mosquitto" / "acl"


def load_all(path: Path) -> list[Any]:
    return list(YAML(typ="safe").load_all(path.read_text()))


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def _policies(tmp_path: Path) -> tuple[Any, Any]:
    base = load(K8S / "configmap.yaml")["data"]
    for name in ("inventory.yaml", "nodes.yaml"):
        (tmp_path / name).write_text(base[name])
    ha_text = load(HA / "configmap-ha.yaml")["data"]["policy.yaml"]
    return (
        parse_policy(base["policy.yaml"], source="base", base_dir=tmp_path),
        parse_policy(ha_text, source="ha", base_dir=tmp_path),
    )


def test_overlay_lists_files_that_exist() -> None:
    kustomization = load(HA / "kustomization.yaml")
    assert "../k8s" in kustomization["resources"]
    for name in [
        *kustomization["resources"],
        *(p["path"] for p in kustomization["patches"] if "path" in p),
    ]:
        assert (HA / name).exists(), name


def test_policy_is_the_base_plus_kubernetes_ha(tmp_path: Path) -> None:
    base, ha = _policies(tmp_path)
    assert ha.config.ha.backend == "kubernetes"
    assert base.config.ha.backend == "none"
    assert ha.config.model_dump(exclude={"ha"}) == base.config.model_dump(exclude={"ha"})
    control = ha.config.control
    assert ha.config.ha.worst_failover_s < control.command_ttl_s * (1 - control.refresh_frac)


def test_role_grants_the_lease_calls_on_the_policys_lease(tmp_path: Path) -> None:
    _, ha = _policies(tmp_path)
    lease = ha.config.ha.kubernetes.lease or f"rheostat-{ha.site}"
    objects = {obj["kind"]: obj for obj in load_all(HA / "rbac.yaml")}
    assert set(objects) == {"ServiceAccount", "Role", "RoleBinding"}
    rules = objects["Role"]["rules"]
    named = [r for r in rules if r.get("resourceNames")]
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in rules)
    assert all(r["resources"] == ["leases"] for r in rules)
    assert {v for r in named for v in r["verbs"]} == {"get", "update"}
    assert {n for r in named for n in r["resourceNames"]} == {lease}
    assert [r["verbs"] for r in rules if not r.get("resourceNames")] == [["create"]]
    binding = objects["RoleBinding"]
    assert binding["roleRef"]["name"] == objects["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == objects["ServiceAccount"]["metadata"]["name"]


def _statefulset() -> Any:
    return load(HA / "statefulset-ha.yaml")


def test_two_replicas_under_the_bound_account_and_a_budget_that_lets_one_go() -> None:
    stateful = _statefulset()
    account = next(o for o in load_all(HA / "rbac.yaml") if o["kind"] == "ServiceAccount")
    base = load(K8S / "deployment.yaml")
    assert stateful["kind"] == "StatefulSet"
    assert stateful["metadata"]["name"] == base["metadata"]["name"]
    assert stateful["spec"]["replicas"] == 2
    assert stateful["spec"]["selector"] == base["spec"]["selector"]
    pod = stateful["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    pdb = load(HA / "pdb-ha.yaml")
    assert pdb["metadata"]["name"] == load(K8S / "pdb.yaml")["metadata"]["name"]
    assert pdb["spec"]["minAvailable"] < stateful["spec"]["replicas"]


def test_the_container_is_the_base_deployments_but_for_identity_and_mounts() -> None:
    base = load(K8S / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    ha = _statefulset()["spec"]["template"]["spec"]["containers"][0]
    differ = {"env", "volumeMounts"}
    assert {k: v for k, v in ha.items() if k not in differ} == {
        k: v for k, v in base.items() if k not in differ
    }
    base_env = {e["name"]: e for e in base["env"]}
    assert all(ha_env in ha["env"] for ha_env in base_env.values())
    mounts = {m["name"]: m for m in ha["volumeMounts"]}
    assert set(mounts) == {m["name"] for m in base["volumeMounts"]}


def _acl_users() -> dict[str, list[str]]:
    """Each user's grant lines in the shipped ACL."""
    users: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in ACL.read_text().splitlines():
        if line.startswith("user "):
            current = users.setdefault(line.split(maxsplit=1)[1], [])
        elif line.startswith("topic ") and current is not None:
            current.append(line)
    return users


def _replica_env(index: int) -> dict[str, str]:
    """The container's environment as Kubernetes expands it for replica `index`."""
    container = _statefulset()["spec"]["template"]["spec"]["containers"][0]
    values: dict[str, str] = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            assert path == "metadata.labels['apps.kubernetes.io/pod-index']"
            values[entry["name"]] = str(index)
        else:
            value = entry["value"]
            for name, known in values.items():
                value = value.replace(f"$({name})", known)
            assert "$(" not in value, entry
            values[entry["name"]] = value
    return values


def test_each_replica_is_its_own_broker_user_with_the_controllers_grants() -> None:
    """Mosquitto binds a client id to its user name: replicas sharing a user would keep kicking
    each other off the broker, so each has a user the ACL grants exactly the controller's topics."""
    users = _acl_users()
    replicas = _statefulset()["spec"]["replicas"]
    names = [_replica_env(i)["RHEOSTAT_MQTT__USERNAME"] for i in range(replicas)]
    assert len(set(names)) == replicas
    for name in names:
        assert users[name] == users["rheostat-controller"], name


def test_each_replica_reads_its_own_password_file() -> None:
    spec = _statefulset()["spec"]["template"]["spec"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "mqtt-password")
    volume = next(v for v in spec["volumes"] if v["name"] == "mqtt-password")
    assert mount["mountPath"] == "/run/secrets/rheostat"  # controller.settings.secrets_dirs
    paths = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    keys = set()
    for index in range(_statefulset()["spec"]["replicas"]):
        sub = mount["subPathExpr"].replace("$(POD_INDEX)", str(index))
        keys.add(paths[f"{sub}/rheostat_mqtt_password"])
    assert len(keys) == _statefulset()["spec"]["replicas"]


def test_each_replica_has_its_own_event_store() -> None:
    """The base's ReadWriteOnce claim mounts on one node; the replicas run on two."""
    stateful = _statefulset()
    (claim,) = stateful["spec"]["volumeClaimTemplates"]
    mount = next(
        m
        for m in stateful["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        if m["mountPath"] == "/var/lib/rheostat"
    )
    assert mount["name"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_the_overlay_never_points_at_a_directory_that_contains_it() -> None:
    """kustomize refuses a resource directory that is an ancestor of the overlay (a cycle): the
    overlay once lived inside its base and could not be built. Checked here without kubectl."""
    for resource in load(HA / "kustomization.yaml")["resources"]:
        target = (HA / resource).resolve()
        if target.is_dir():
            assert target != HA.resolve()
            assert target not in HA.resolve().parents, resource


def test_kustomize_builds_the_overlay_without_the_base_controller() -> None:
    # Debian's kubernetes-client (1.20) is too old: its kustomize reads `patches` otherwise.
    kubectl = require_binary(
        "kubectl", install="kubectl 1.21 or newer from the Kubernetes or Google Cloud packages"
    )
    built = subprocess.run(
        [kubectl, "kustomize", str(HA)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    objects = [o for o in YAML(typ="safe").load_all(built.stdout) if o]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("StatefulSet", "rheostat") in kinds
    assert ("Deployment", "rheostat") not in kinds
    assert ("PersistentVolumeClaim", "rheostat-state") not in kinds
    assert ("Role", "rheostat-leader-election") in kinds
    config = next(o for o in objects if o["kind"] == "ConfigMap" and "policy.yaml" in o["data"])
    assert "backend: kubernetes" in config["data"]["policy.yaml"]


def test_systemd_active_standby_policy_loads_and_fits_the_ttl() -> None:
    path = ROOT / "deploy" / "systemd" / "policy-ha.example.yaml"
    policy = parse_policy(path.read_text(), source=str(path))
    assert policy.config.ha.backend == "etcd"
    assert len(policy.config.ha.etcd.endpoints) == 3
