"""deploy/emqx/: the broker-cluster example agrees with the code it runs (Docker does not run
here: the compose file is read, its policies go through the real loader, its command through
the real CLI parser)."""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from controller.cli import build_parser
from controller.policy_file import load_policy

EMQX = Path(__file__).resolve().parents[2] / "deploy" / "emqx"


def _compose() -> dict:
    return YAML(typ="safe").load((EMQX / "docker-compose.yml").read_text())


def test_three_emqx_nodes_form_one_cluster_hashing_shared_subscriptions_by_topic() -> None:
    services = _compose()["services"]
    nodes = [s for name, s in services.items() if name.startswith("emqx")]
    assert len(nodes) == 3
    names = {s["environment"]["EMQX_NODE__NAME"] for s in nodes}
    seeds = {s["environment"]["EMQX_CLUSTER__STATIC__SEEDS"] for s in nodes}
    assert len(seeds) == 1
    assert all(name in next(iter(seeds)) for name in names)
    assert {s["environment"]["EMQX_BROKER__SHARED_SUBSCRIPTION_STRATEGY"] for s in nodes} == {
        "hash_topic"
    }


def test_controllers_load_their_policies_and_run_the_cli() -> None:
    services = _compose()["services"]
    controllers = {n: s for n, s in services.items() if n.startswith("rheostat")}
    assert len(controllers) == 2
    hosts, ids = set(), set()
    for service in controllers.values():
        build_parser().parse_args(service["command"])
        local = service["volumes"][0].split(":")[0]
        policy = load_policy(EMQX / local)
        assert policy.config.ha.backend == "etcd"
        assert policy.config.ingest.workers > 0
        hosts.add(policy.config.mqtt.host)
        ids.add(policy.config.mqtt.client_id)
    assert len(hosts) == 2  # the two controllers on different broker nodes
    assert len(ids) == 2
