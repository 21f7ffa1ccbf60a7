"""deploy/k8s/ha/: the active/standby overlay agrees with the base, the policy and its RBAC.

No cluster or kustomize runs here; the files are held to the code: the overlay's policy passes
the real loader (failover budget included) and differs from the base only by its `ha` section,
the Role grants exactly the Lease calls `controller.ha.kubernetes` makes on the Lease the policy
names, and the Deployment runs two replicas under the bound service account.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from controller.policy_file import parse_policy

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
HA = K8S / "ha"


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
    assert ".." in kustomization["resources"]
    for name in [*kustomization["resources"], *(p["path"] for p in kustomization["patches"])]:
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


def test_two_replicas_under_the_bound_account_and_a_budget_that_lets_one_go() -> None:
    deployment = load(HA / "deployment-ha.yaml")
    account = next(o for o in load_all(HA / "rbac.yaml") if o["kind"] == "ServiceAccount")
    assert deployment["metadata"]["name"] == load(K8S / "deployment.yaml")["metadata"]["name"]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    pdb = load(HA / "pdb-ha.yaml")
    assert pdb["metadata"]["name"] == load(K8S / "pdb.yaml")["metadata"]["name"]
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_systemd_active_standby_policy_loads_and_fits_the_ttl() -> None:
    path = ROOT / "deploy" / "systemd" / "policy-ha.example.yaml"
    policy = parse_policy(path.read_text(), source=str(path))
    assert policy.config.ha.backend == "etcd"
    assert len(policy.config.ha.etcd.endpoints) == 3
