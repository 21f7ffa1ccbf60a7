"""Every PromQL expression the deploy/ files hold, and the metric names they read.

Shared by the static checks (syntax, variables) and the live check against a Prometheus scraping
`rheostat demo`, so both look at exactly the same queries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))

#: What Grafana puts in place of its variables when a dashboard shows every site, row and rack.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}
_VARIABLE = re.compile(r"\$(\w+)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTORS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_PROMQL_WORDS_TEXT = (
    "sum min max avg count stddev stdvar topk bottomk quantile count_values group by without "
    "on ignoring group_left group_right and or unless bool offset rate irate increase delta "
    "idelta deriv predict_linear histogram_quantile clamp clamp_min clamp_max abs ceil floor "
    "round exp ln log2 log10 sqrt time timestamp vector scalar sort sort_desc label_replace "
    "label_join absent absent_over_time changes resets min_over_time max_over_time "
    "avg_over_time sum_over_time count_over_time last_over_time quantile_over_time "
    "stddev_over_time present_over_time day_of_week hour minute month year days_in_month inf "
    "nan e"
)
#: Functions, aggregations and keywords: identifiers in an expression that are not metric names.
PROMQL_WORDS = frozenset(_PROMQL_WORDS_TEXT.split())


@dataclass(frozen=True)
class Query:
    """One expression and where it came from, for messages that point at the file to fix."""

    source: str
    expr: str

    def concrete(self) -> str:
        """The expression as Prometheus receives it from Grafana with every variable on "All"."""
        expr = self.expr
        for name, value in GRAFANA_SUBSTITUTIONS.items():
            expr = expr.replace(name, value)
        return _VARIABLE.sub(".*", expr)

    def variables(self) -> set[str]:
        return set(_VARIABLE.findall(self.expr)) - {"__rate_interval", "__interval", "__range"}


def load_dashboard(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in board.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries() -> list[Query]:
    return [
        Query(f"{path.name}: {panel['title']} [{target['refId']}]", target["expr"])
        for path in DASHBOARDS
        for panel in panels(load_dashboard(path))
        for target in panel.get("targets", [])
    ]


def annotation_queries() -> list[Query]:
    return [
        Query(f"{path.name}: annotation {item['name']}", item["expr"])
        for path in DASHBOARDS
        for item in load_dashboard(path)["annotations"]["list"]
        if "expr" in item
    ]


def variable_queries() -> list[Query]:
    """The series selectors inside `label_values(selector, label)` template variables."""
    out = []
    for path in DASHBOARDS:
        for var in load_dashboard(path)["templating"]["list"]:
            if var["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"])
            assert match, (
                f"{path.name}: variable {var['name']} is not label_values(selector, label)"
            )
            out.append(Query(f"{path.name}: variable {var['name']}", match.group(1)))
    return out


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in YAML(typ="safe").load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def rule_queries() -> list[Query]:
    return [
        Query(f"rule {rule.get('record') or rule.get('alert')}", rule["expr"]) for rule in rules()
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are not PromQL words or label names."""
    text = _STRINGS.sub('""', expr)
    text = _LABEL_LISTS.sub(" ", text)
    text = _SELECTORS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    return {
        name
        for name in _IDENT.findall(text)
        if name not in PROMQL_WORDS and not re.fullmatch(r"\d.*", name)
    }
