"""deploy/grafana/: dashboards Grafana can load and whose queries Prometheus can parse.

Grafana does not run here; what it would reject or silently show empty is checked instead: JSON
shape, unique ids, panels on the 24-column grid, every `$variable` defined, every panel on the
dashboard's datasource variable, and every expression (panels, annotations, variables) through
Prometheus' own parser, by handing them to `promtool check rules` as a rule file. Whether they
return data is the live test's job (test_deploy_live_prometheus.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.deploy.promql_sources import (
    DASHBOARDS,
    DEPLOY,
    annotation_queries,
    dashboard_queries,
    load_dashboard,
    metric_names,
    panels,
    variable_queries,
)
from tests.services import require_binary

GRAFANA = DEPLOY / "grafana"
DATASOURCE_UID = "${datasource}"


def test_the_five_dashboards_exist() -> None:
    titles = {load_dashboard(p)["title"] for p in DASHBOARDS}
    assert titles == {
        "Rheostat / Fleet overview",
        "Rheostat / Row and rack",
        "Rheostat / Demand response",
        "Rheostat / Controller health",
        "Rheostat / Facility and carbon",
    }
    uids = [load_dashboard(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = load_dashboard(path)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(board)]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for panel in panels(board):
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert 0 < pos["w"] <= 24 - pos["x"], panel["title"]
        assert panel["title"]
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID
            assert target["expr"].strip()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_variable_a_query_uses_is_defined(path: Path) -> None:
    board = load_dashboard(path)
    defined = {v["name"] for v in board["templating"]["list"]}
    used = {
        name
        for query in dashboard_queries() + annotation_queries() + variable_queries()
        if query.source.startswith(path.name)
        for name in query.variables()
    }
    assert used <= defined


def test_every_query_parses(tmp_path: Path) -> None:
    """Prometheus' parser on every dashboard expression, via a rule file promtool checks."""
    queries = dashboard_queries() + annotation_queries() + variable_queries()
    rules = [
        {"record": f"dashboard:check_{i}", "expr": q.concrete()} for i, q in enumerate(queries)
    ]
    rule_file = tmp_path / "dashboard_queries.yml"
    YAML(typ="safe").dump({"groups": [{"name": "dashboards", "rules": rules}]}, rule_file)
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_dashboards_cover_what_operators_watch() -> None:
    def names(title: str) -> set[str]:
        path = next(p for p in DASHBOARDS if load_dashboard(p)["title"] == title)
        return {
            name
            for q in dashboard_queries()
            if q.source.startswith(path.name)
            for name in metric_names(q.expr)
        }

    fleet = names("Rheostat / Fleet overview")
    assert {
        "rheostat_site_power_watts",
        "rheostat_site_contract_watts",
        "rheostat_dr_target_watts",
        "rheostat_site_headroom_watts",
        "rheostat_tier_cap_watts",
    } <= fleet
    racks = names("Rheostat / Row and rack")
    assert {"rheostat_rack_breaker_utilization_ratio", "rheostat_rack_stale"} <= racks
    dr = names("Rheostat / Demand response")
    assert {"rheostat_dr_shortfall_watts", "rheostat_dr_compliance_ratio"} <= dr
    health = names("Rheostat / Controller health")
    assert {
        "rheostat_tick_duration_seconds_bucket",
        "rheostat_telemetry_messages_total",
        "rheostat_telemetry_rejected_total",
    } <= health
    facility = names("Rheostat / Facility and carbon")
    assert {
        "rheostat_facility_power_watts",
        "rheostat_it_budget_watts",
        "rheostat_pue",
        "rheostat_facility_meter_age_seconds",
        "rheostat_emissions_grams_total",
        "rheostat_grid_signal",
        "rheostat_flex_job_speed_ratio",
    } <= facility
    board = load_dashboard(next(p for p in DASHBOARDS if "racks" in p.name))
    assert {"site", "row", "rack"} <= {v["name"] for v in board["templating"]["list"]}


def test_provisioning_points_at_the_dashboards() -> None:
    yaml = YAML(typ="safe")
    datasources = yaml.load((GRAFANA / "provisioning/datasources/rheostat.yml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    # A second default datasource fails provisioning beside the site's own default.
    assert source.get("isDefault", False) is False
    providers = yaml.load((GRAFANA / "provisioning/dashboards/rheostat.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def test_metric_names_are_extracted_from_expressions() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, instance) (rate(rheostat_tick_duration_seconds_bucket"
        '{instance=~"$instance"}[1m]))) / on (site) clamp_min(rheostat_site_limit_watts, 1e-9)'
    )
    assert metric_names(expr) == {
        "rheostat_tick_duration_seconds_bucket",
        "rheostat_site_limit_watts",
    }


def test_drill_down_links_reach_a_dashboard_and_its_variables() -> None:
    boards = {load_dashboard(p)["uid"]: load_dashboard(p) for p in DASHBOARDS}
    links = [
        link["url"]
        for board in boards.values()
        for panel in panels(board)
        for link in panel["fieldConfig"]["defaults"].get("links", [])
    ]
    assert links
    for url in links:
        match = re.fullmatch(r"/d/([\w-]+)/[\w-]+\?(.*)", url)
        assert match, url
        target = boards[match.group(1)]
        variables = {v["name"] for v in target["templating"]["list"]}
        assert set(re.findall(r"var-(\w+)=", match.group(2))) <= variables, url


def _board(title: str) -> dict[str, Any]:
    return load_dashboard(next(p for p in DASHBOARDS if load_dashboard(p)["title"] == title))


def test_emissions_and_cost_panels_carry_their_units() -> None:
    board = _board("Rheostat / Facility and carbon")
    by_metric = {
        name: panel
        for panel in panels(board)
        for target in panel["targets"]
        for name in metric_names(target["expr"])
    }
    emissions = by_metric["rheostat_emissions_grams_total"]
    assert emissions["fieldConfig"]["defaults"]["unit"] == "masskg"
    assert "/ 1000" in emissions["targets"][0]["expr"]  # exported in grams, shown in kg
    cost = by_metric["rheostat_energy_cost_total"]
    # The currency is the policy's, read from the info series, not a fixed Grafana currency unit.
    assert not cost["fieldConfig"]["defaults"]["unit"].startswith("currency")
    assert "rheostat_energy_cost_info" in cost["targets"][0]["expr"]
    assert "{{currency}}" in cost["targets"][0]["legendFormat"]
    assert "$currency" in cost["title"] or "${currency}" in cost["title"]
    for panel in panels(board):
        for target in panel["targets"]:
            if "rheostat_flex_job_" in target["expr"]:
                # Prometheus renames an exposed `job` label; the series carry `flex_job`.
                assert "{{job}}" not in target.get("legendFormat", ""), panel["title"]


@pytest.mark.parametrize(
    "title",
    ["Rheostat / Fleet overview", "Rheostat / Demand response", "Rheostat / Row and rack"],
)
def test_gpu_dashboards_link_the_dcgm_and_kepler_dashboards(title: str) -> None:
    links = {link["title"]: link for link in _board(title)["links"]}
    for name in ("DCGM", "Kepler"):
        (link,) = [v for k, v in links.items() if name in k]
        assert link["type"] == "link"
        assert link["url"] == f"/dashboards?query={name}"  # Grafana's own dashboard search
        assert link["keepTime"] is True
