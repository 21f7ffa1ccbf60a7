"""OpenAPI v3 schemas (a subset) of the Prometheus Operator's monitoring.coreos.com/v1 CRDs.

Source: the `openAPIV3Schema` of the CustomResourceDefinitions `podmonitors.monitoring.coreos.com`
and `prometheusrules.monitoring.coreos.com` published by the Prometheus Operator project
(github.com/prometheus-operator/prometheus-operator, example/prometheus-operator-crd/, operator
releases 0.82 to 0.91; Apache License 2.0). Written out here as JSON Schema for the fields
Rheostat's manifests use and their siblings, with the CRDs' types, patterns, enums and required
lists; descriptions left out. Fields not listed here are refused (`additionalProperties: false`):
the API server would silently prune an unknown field of a structural schema, so a misspelt key
would otherwise vanish without an error.
"""

from __future__ import annotations

from typing import Any

#: The CRDs' Duration pattern (intervals, timeouts, `for`).
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)

_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}

_OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}

_LABEL_SELECTOR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

_RELABEL: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {
            "type": "string",
            "enum": [
                *("replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod"),
                *("labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep"),
                *("lowercase", "Lowercase", "uppercase", "Uppercase"),
                *("keepequal", "KeepEqual", "dropequal", "DropEqual"),
            ],
        },
        "modulus": {"type": "integer"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
    },
}


def _resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _OBJECT_META,
            "spec": spec,
        },
    }


POD_MONITOR: dict[str, Any] = _resource(
    "PodMonitor",
    {
        "type": "object",
        "required": ["selector"],
        "additionalProperties": False,
        "properties": {
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "selector": _LABEL_SELECTOR,
            "sampleLimit": {"type": "integer"},
            "scrapeProtocols": {
                "type": "array",
                "items": {
                    "type": "string",
                    "enum": [
                        "PrometheusProto",
                        "OpenMetricsText0.0.1",
                        "OpenMetricsText1.0.0",
                        "PrometheusText0.0.4",
                        "PrometheusText1.0.0",
                    ],
                },
            },
            "podMetricsEndpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "path": {"type": "string"},
                        "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "enableHttp2": {"type": "boolean"},
                        "filterRunning": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": _RELABEL},
                        "metricRelabelings": {"type": "array", "items": _RELABEL},
                    },
                },
            },
        },
    },
)

_RULE: dict[str, Any] = {
    "type": "object",
    "required": ["expr"],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": ["integer", "string"]},
        "for": {"type": "string", "pattern": DURATION},
        "keep_firing_for": {"type": "string", "minLength": 1, "pattern": DURATION},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}

PROMETHEUS_RULE: dict[str, Any] = _resource(
    "PrometheusRule",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string", "pattern": DURATION},
                        "query_offset": {"type": "string", "pattern": DURATION},
                        "limit": {"type": "integer"},
                        "labels": _STRING_MAP,
                        "partial_response_strategy": {
                            "type": "string",
                            # The CRD writes ^(?i)...; Python's re wants the flag first.
                            "pattern": r"(?i)^(abort|warn)?$",
                        },
                        "rules": {"type": "array", "items": _RULE},
                    },
                },
            }
        },
    },
)

#: kind -> schema, for the objects under deploy/k8s/ that belong to monitoring.coreos.com.
SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": POD_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
}
