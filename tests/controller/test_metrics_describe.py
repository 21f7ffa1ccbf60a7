"""Every collector the daemon registers describes what it collects, so the registry refuses a
collision (a second copy of a collector, or any collector reusing a family's name) at start
instead of serving a scrape Prometheus rejects."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.carbon import CarbonCollector, CarbonHook, CarbonSection
from controller.config import HaSection
from controller.daemon import build_runtime
from controller.facility import FacilityCollector, FacilityHook, FacilitySection
from controller.ha.runner import HaRunner
from controller.http import daemon_registry
from controller.inventory import parse_inventory
from controller.jobs import SyncJobs
from controller.metric_families import Family
from controller.metrics import edge, fleet, jobs, loop, nodes
from controller.metrics.edge import EdgeCollector
from controller.metrics.ha import HaCollector
from controller.metrics.jobs import SyncJobsCollector
from controller.metrics.nodes import NodesCollector
from controller.metrics.rheostat import RheostatCollector
from controller.nodes import NodeAssembler
from controller.policy_file import parse_policy
from controller.runtime import DemandResponseStatus
from controller.wire import MessageRejections
from policies.pipeline import decide
from tests.controller.test_ctl_nodes import INVENTORY as NODES_INVENTORY
from tests.controller.test_ctl_nodes import POLICY as NODES_POLICY
from tests.controller.test_ctl_nodes import msg, topic

POLICY = parse_policy(
    "site: {name: x, topology: {generate: {gpus: 32}}}\ncontrol: {tick_period_s: 1}\n"
    "metrics: {per_gpu: true}\n",
    source="x.yaml",
)


def _own_collectors() -> list[tuple[Collector, tuple[Family, ...]]]:
    """The collectors of `controller.metrics`, each with every optional family switched on
    (a decision, per-GPU series, a demand-response event, node agents that reported)."""
    rt = build_runtime(POLICY, clock=lambda: 100.0, version="t")
    rt.fleet.rack_last_seen_s[:] = 99.0
    rt.decision, rt.decision_state = decide(
        POLICY.topology,
        rt.fleet.copy(),
        tier=rt.tier_table[rt.fleet.workload_class],
        limits=rt.limits,
        settings=POLICY.config.policy_settings(),
        state=rt.decision_state,
        now_s=100.0,
        stale_rack=rt.fleet.stale_racks(100.0, 5.0),
    )
    rt.demand_response = DemandResponseStatus(
        active=True, target_w=1.0, baseline_w=2.0, shortfall_w=0.5, compliance_ratio={"e1": 0.9}
    )
    rt.ticks.last_tick_s = 99.5
    rt.reloads.last_success_s = 90.0
    rejections = MessageRejections()
    rejections.counts[("job", "malformed")] = 2
    reported = np.ones((POLICY.topology.n_racks, 7), np.int64)
    assembler = NodeAssembler(
        site="dc",
        topology=parse_policy(NODES_POLICY, source="p.yaml").topology,
        inventory=parse_inventory(NODES_INVENTORY, source="n.yaml"),
        forward=lambda _topic, _payload: True,
    )
    assert assembler.handle(topic("n1"), msg("n1", 1, cmd_rejected={"stale_seq": 2}))
    assembler.handle(topic("n9"), msg("n9", 1))  # unknown_node: counted, dropped
    ha = HaCollector(HaRunner(HaSection(), site="x", name="ctl"), lambda: reported)
    return [
        (RheostatCollector(rt, clock=lambda: 100.0), (*loop.FAMILIES, *fleet.FAMILIES)),
        (EdgeCollector(rt, rejections), edge.FAMILIES),
        (ha, ha.families()),
        (NodesCollector(assembler), nodes.FAMILIES),
        (SyncJobsCollector(SyncJobs(site="x", topology=POLICY.topology)), jobs.FAMILIES),
    ]


def _hooks_collectors() -> list[Collector]:
    """The collectors that live beside their hooks (facility, carbon)."""
    topo = POLICY.topology
    return [
        FacilityCollector(FacilityHook(section=FacilitySection(), site="x"), clock=lambda: 1.0),
        CarbonCollector(CarbonHook(section=CarbonSection(), site="x", topology=topo), clock=float),
    ]


def _label_names(family: Metric) -> set[str]:
    return {
        k
        for s in family.samples
        for k in s.labels
        if not (family.type == "histogram" and k == "le")
    }


def test_each_collector_describes_exactly_what_it_collects() -> None:
    """Names, types, help texts and label names; every described family is collected with
    samples here, so the label check is not vacuous."""
    for collector, families in _own_collectors():
        described = {m.name: m for m in collector.describe()}
        specs = {f.full_name: f for f in families}
        collected = {m.name: m for m in collector.collect()}
        assert set(described) == set(specs) == set(collected), type(collector).__name__
        for name, family in collected.items():
            assert (family.type, family.documentation) == (
                described[name].type,
                described[name].documentation,
            ), name
            assert family.samples, name
            assert described[name].samples == []
            assert _label_names(family) == set(specs[name].labels), name


def test_the_hooks_collectors_describe_what_they_collect() -> None:
    for collector in _hooks_collectors():
        described = {(m.name, m.type) for m in collector.describe()}
        collected = {(m.name, m.type) for m in collector.collect()}
        assert collected <= described, (type(collector).__name__, collected - described)


class _Impostor(Collector):
    """Describes one family another collector already exposes."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def describe(self) -> list[Metric]:
        return [Metric(self.name, "", self.kind)]

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, "", value=1.0)


def test_the_daemon_registry_refuses_a_collision_with_any_collector() -> None:
    collectors = [c for c, _ in _own_collectors()] + _hooks_collectors()
    registry = daemon_registry()
    for collector in collectors:
        registry.register(collector)  # no two of the daemon's collectors collide
    for collector in collectors:
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            registry.register(collector)
        for family in collector.describe():
            with pytest.raises(ValueError, match=family.name):
                registry.register(_Impostor(family.name, family.type))
    registry.register(_Impostor("rheostat_something_new", "gauge"))
