"""deploy/k8s/prometheusrule.yaml from deploy/prometheus/rules/*.yml, for the Prometheus Operator.

The rule files stay the source (promtool checks and tests them); the PrometheusRule carries the
same groups. Regenerate after editing a rule file:

    python -m tests.deploy.prometheusrule

`test_deploy_k8s_monitoring.py` fails while the two differ.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import LiteralScalarString

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
TARGET = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"
HEADER = """\
# Rheostat's recording and alerting rules for the Prometheus Operator (kube-prometheus-stack).
# GENERATED from deploy/prometheus/rules/*.yml by `python -m tests.deploy.prometheusrule`: edit
# those files, not this one (a test fails while they differ).
# Your Prometheus picks this up only if its ruleSelector matches these labels: with
# kube-prometheus-stack, add `release: <your release name>` below or set
# prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false.
"""


def rule_groups() -> list[dict[str, Any]]:
    """Every group of every rule file, in file order (alerts.yml, then recording.yml)."""
    groups: list[dict[str, Any]] = []
    for path in RULE_FILES:
        groups.extend(YAML(typ="safe").load(path.read_text())["groups"])
    return groups


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "rheostat",
            "namespace": "rheostat",
            "labels": {
                "app.kubernetes.io/name": "rheostat",
                "app.kubernetes.io/part-of": "rheostat",
            },
        },
        "spec": {"groups": rule_groups()},
    }


def _literal(value: Any) -> Any:
    """Multi-line strings (PromQL) as `|` blocks, as the rule files write them."""
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    if isinstance(value, str) and "\n" in value:
        return LiteralScalarString(value)
    return value


def render() -> str:
    yaml = YAML()
    yaml.width = 4096  # keep annotations on one line each
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    yaml.dump(_literal(prometheus_rule()), out)
    return HEADER + out.getvalue()


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}")
