"""deploy/prometheus/: the config and rules pass promtool, and every rule has a unit test.

promtool checks syntax and runs the rule unit tests in deploy/prometheus/tests/; what it does not
check (that each alert is proven to fire, that each recorded series is asserted on, that every
alert can route and explain itself) is checked here by reading the files.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.services import require_binary

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*_test.yml"))
#: The kube-prometheus convention most Alertmanager routing trees match on.
SEVERITIES = {"critical", "warning"}
RUNBOOK = PROMETHEUS_DIR.parents[1] / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/rheostat/rheostat/blob/main/docs/runbook.md"


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def rules(kind: str) -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_files_are_valid() -> None:
    assert RULE_FILES
    result = promtool("check", "rules", *(str(p) for p in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_shown_to_fire() -> None:
    fired = {
        case["alertname"]
        for path in RULE_TESTS
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for path in RULE_TESTS
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in rules("alert")}
    assert alerts - fired == set(), "alerts without a case where they fire"
    # A case where it stays quiet proves the threshold or the `for:` window, not only the query.
    assert alerts - quiet == set(), "alerts without a case where they stay quiet"


def test_every_recording_rule_is_asserted_on() -> None:
    tested = " ".join(
        case["expr"]
        for path in RULE_TESTS
        for test in load(path)["tests"]
        for case in test.get("promql_expr_test", [])
        if case.get("exp_samples")
    )
    names = {rule["record"] for rule in rules("record")}
    untested = {name for name in names if not re.search(rf"(?<![\w:]){re.escape(name)}\b", tested)}
    assert untested == set()


@pytest.mark.parametrize("rule", rules("alert"), ids=lambda r: r["alert"])
def test_alerts_route_and_explain_themselves(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Rheostat")
    assert rule["labels"]["severity"] in SEVERITIES
    assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


def runbook_sections() -> dict[str, str]:
    """The runbook's `## Heading` sections by GitHub anchor (heading in lower case)."""
    sections: dict[str, str] = {}
    for block in re.split(r"^## ", RUNBOOK.read_text(), flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        sections[heading.strip().lower()] = body
    return sections


def test_every_alert_links_its_own_runbook_section_with_its_severity() -> None:
    sections = runbook_sections()
    alerts = rules("alert")
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == RUNBOOK_URL, rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in sections, f"docs/runbook.md has no section for {rule['alert']}"
        assert f"**Severity: {rule['labels']['severity']}.**" in sections[anchor], rule["alert"]
    # No section for an alert that no longer exists.
    assert set(sections) == {rule["alert"].lower() for rule in alerts}


def test_scrape_config_names_the_job_rules_select() -> None:
    config = load(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    selected = {
        job for rule in rules("alert") for job in re.findall(r'job="([^"]+)"', rule["expr"])
    }
    assert selected <= jobs
    assert sorted(config["rule_files"]) == sorted(f"rules/{p.name}" for p in RULE_FILES)
