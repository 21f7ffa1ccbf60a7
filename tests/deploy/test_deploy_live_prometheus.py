"""Dashboards and rules against a real Prometheus scraping a running `rheostat demo`.

promtool accepts a query over a misspelled metric and a dashboard panel that will stay empty
forever; this module does not. One demo (embedded broker, simulated racks, the controller, its
metrics server), one daemon with a demand-response event in force (tests/deploy/dr_site.py: the
demo has no demand-response source) and one Prometheus scraping both run for the whole module;
then:
- every panel, annotation and template-variable query of every dashboard returns data,
- every recording rule returns data, and every rule (recording and alert) is evaluated by
  Prometheus itself without error,
- every metric name a rule or a panel reads exists in the controller's /metrics output,
- `promtool check metrics` accepts that output, and the probe paths the manifests use answer.

A query is required to return data when every metric it reads (through recording rules, down to
the scraped series) is in the scrape and, for event-only queries, while an event is active; the
DR site makes both true, and a test asserts it is so, so no demand-response panel is let off.
"""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.dr_site import running_dr_site
from tests.deploy.promql_sources import (
    RULE_FILES,
    Query,
    annotation_queries,
    dashboard_queries,
    metric_names,
    recorded_names,
    rule_queries,
    rules,
    variable_queries,
)
from tests.services import Prometheus, free_port, require_binary, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO_RACKS = 4
#: Long enough for the module's checks; the demo is stopped when they finish.
DEMO_DURATION_S = 120
#: Series the controller exports only with a demand-response source (docs/monitoring.md).
DR_ONLY = frozenset(
    {
        "rheostat_dr_target_watts",
        "rheostat_dr_baseline_watts",
        "rheostat_dr_shortfall_watts",
        "rheostat_dr_compliance_ratio",
    }
)
#: Series the controller exports only with node agents (a `nodes:` inventory); the demo's racks
#: report as rack agents. `tests/integration/test_node_agents.py` scrapes them from a controller.
NODE_ONLY = frozenset({"rheostat_gpu_cap_mismatch", "rheostat_node_fallback"})
#: Series Prometheus makes itself, not the controller.
PROMETHEUS_OWN = frozenset({"up"})
EVENT_ONLY = re.compile(r"rheostat_dr_active(\{[^}]*\})?\s*==\s*1")


@dataclass(frozen=True)
class Live:
    prometheus: Prometheus
    metrics_url: str
    #: /metrics of the demo and of the DR site.
    expositions: tuple[str, ...]

    @property
    def exported(self) -> set[str]:
        return {
            line.split("{")[0].split(" ")[0]
            for text in self.expositions
            for line in text.splitlines()
            if line and not line.startswith("#")
        }


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def wait_for(predicate_name: str, predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{predicate_name} not reached in {timeout_s} s")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running `rheostat demo`; yields its metrics server's host:port."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "demo",
                "--racks",
                str(DEMO_RACKS),
                "--duration",
                str(DEMO_DURATION_S),
                "--metrics-port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout_s=30.0)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def dr_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The daemon with a demand-response event in force; yields its metrics host:port."""
    with running_dr_site(tmp_path_factory.mktemp("dr-site")) as target:
        yield target


@pytest.fixture(scope="module")
def live(prometheus: Prometheus, demo: str, dr_site: str) -> Live:
    prometheus.start(targets={"rheostat": [demo, dr_site]}, rule_files=RULE_FILES)

    def scraped_and_evaluated() -> bool:
        # Enough scrapes for rate() over the dashboards' windows, and every rule group evaluated
        # at least once with data in place (the groups run every 5 s).
        if not prometheus.query('count_over_time(up{job="rheostat"}[1m]) >= 4'):
            return False
        groups = prometheus.api("/api/v1/rules")["groups"]
        return (
            all(rule["health"] != "unknown" for g in groups for rule in g["rules"])
            and bool(prometheus.query("site:rheostat_headroom_watts:min5m"))
            and bool(prometheus.query("site:rheostat_dr_delivered_ratio"))
            and bool(prometheus.query("rheostat_dr_compliance_ratio"))
        )

    wait_for("scrapes, rule evaluations and the DR event", scraped_and_evaluated, timeout_s=60.0)
    expositions = []
    for target in (demo, dr_site):
        status, text = http_get(f"http://{target}/metrics")
        assert status == 200
        expositions.append(text)
    return Live(prometheus, f"http://{demo}", tuple(expositions))


def sources(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The scraped series a metric name comes from: itself, or a recording rule's inputs."""
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    if name not in recorded or name in seen:
        return {name}
    return {
        leaf for inner in metric_names(recorded[name]) for leaf in sources(inner, seen | {name})
    }


def why_no_data_is_allowed(query: Query, live: Live, event_active: bool) -> str | None:
    """None when the query must return data; else the reason it may not (DR source or event)."""
    leaves = {leaf for name in metric_names(query.expr) for leaf in sources(name)}
    absent = leaves - PROMETHEUS_OWN - live.exported
    if absent:
        # Only demand-response series may be absent; anything else is a typo or a rename.
        assert absent <= DR_ONLY | NODE_ONLY, (
            f"{query.source} reads series the demo does not export: {absent}"
        )
        return "no demand-response source" if absent <= DR_ONLY else "no node agents"
    expanded = query.expr + " ".join(
        rule["expr"] for rule in rules() if "record" in rule and rule["record"] in query.expr
    )
    if not event_active and EVENT_ONLY.search(expanded):
        return "no demand-response event active"
    return None


def dashboard_and_rule_queries() -> list[Query]:
    recording = [q for q in rule_queries() if q.source.removeprefix("rule ") in recorded_names()]
    return dashboard_queries() + annotation_queries() + variable_queries() + recording


def test_every_panel_variable_and_recording_rule_returns_data(live: Live) -> None:
    event_active = bool(live.prometheus.query("rheostat_dr_active == 1"))
    empty, errors = [], []
    for query in dashboard_and_rule_queries():
        try:
            result = live.prometheus.query(query.concrete())
        except RuntimeError as exc:
            errors.append(f"{query.source}: {exc}")
            continue
        if why_no_data_is_allowed(query, live, event_active) is None and not result:
            empty.append(f"{query.source}: {query.concrete()}")
    assert errors == []
    assert empty == []


def test_every_rule_is_evaluated_without_error(live: Live) -> None:
    groups = live.prometheus.api("/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    declared = {rule.get("record") or rule["alert"] for rule in rules()}
    assert loaded == declared
    broken = [
        f"{rule['name']}: {rule.get('lastError')}"
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert broken == []
    for query in rule_queries():
        live.prometheus.query(query.expr)  # raises with Prometheus' error text


def test_every_metric_a_rule_or_panel_reads_is_exported(live: Live) -> None:
    queries = dashboard_queries() + annotation_queries() + variable_queries() + rule_queries()
    read = {name for query in queries for name in metric_names(query.expr)}
    missing = read - live.exported - recorded_names() - PROMETHEUS_OWN
    # Demand-response series are absent without a DR source; anything else missing is a typo
    # or a renamed metric.
    assert missing - DR_ONLY - NODE_ONLY == set()
    assert live.exported >= {"rheostat_dr_active", "rheostat_site_power_watts"}


@pytest.mark.parametrize("source", [0, 1], ids=["demo", "dr-site"])
def test_promtool_accepts_the_metrics_output(live: Live, source: int) -> None:
    result = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=live.expositions[source],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # promtool prints lint findings, even at rc 0


@pytest.mark.parametrize("source", [0, 1], ids=["demo", "dr-site"])
def test_exposition_has_no_reserved_labels_and_only_finite_values(live: Live, source: int) -> None:
    samples = [
        sample
        for family in text_string_to_metric_families(live.expositions[source])
        for sample in family.samples
    ]
    assert len(samples) > 50
    reserved = [s for s in samples if {"job", "instance"} & set(s.labels)]
    assert reserved == []  # Prometheus would rename them exported_job, exported_instance
    assert [s for s in samples if any(k.startswith("__") for k in s.labels)] == []
    assert [s for s in samples if not math.isfinite(s.value)] == []


def test_prometheus_stores_no_renamed_labels(live: Live) -> None:
    for label in ("exported_job", "exported_instance"):
        assert live.prometheus.query(f'count({{job="rheostat", {label}!=""}})') == []
    # Headroom ratios exist for every row the controller reports, and none is NaN.
    ratios = live.prometheus.query("site_row:rheostat_headroom_ratio")
    assert ratios
    assert all(math.isfinite(float(r["value"][1])) for r in ratios)


def test_demand_response_series_are_scraped_during_the_event(live: Live) -> None:
    # Without them every demand-response panel above would have been let off its data check.
    assert live.exported >= DR_ONLY
    assert live.prometheus.query("rheostat_dr_active == 1")


def test_probe_paths_the_manifests_use_answer(live: Live) -> None:
    status, text = http_get(live.metrics_url + "/livez")
    assert status == 200, text
    status, text = http_get(live.metrics_url + "/readyz")
    assert status in {200, 503}
    assert text.strip()


def test_recorded_series_resolve_to_the_scraped_ones_they_read() -> None:
    assert sources("site:rheostat_dr_delivered_ratio") == {
        "rheostat_dr_baseline_watts",
        "rheostat_site_power_watts",
        "rheostat_dr_target_watts",
        "rheostat_dr_active",
    }
    assert sources("rheostat_site_power_watts") == {"rheostat_site_power_watts"}
