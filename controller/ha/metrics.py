"""Leadership metrics, read from the `HaRunner` at scrape time.

`rheostat_ha_leader` is 1 on the process that may command; summed over a site's controllers it
must be exactly 1 (the alert `RheostatNoLeader` fires at 0). `rheostat_ha_epoch` only grows;
`rheostat_ha_term_changes_total` counts how often it moved while this process watched, and
`rheostat_agent_command_rejections_reported{reason="stale_epoch"}` the commands agents say they
fenced off since they booted (read from the shared arrays, so it works with ingest workers too;
`rheostat_agent_command_rejections_total` is the in-process ingest's counter that never goes down).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import NDArray
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.ha.runner import HaRunner
from controller.metric_families import describe_families
from controller.wire import COMMAND_REJECT_REASONS


class HaCollector(Collector):
    """Register on the daemon's registry; yields the leadership families each scrape."""

    def __init__(
        self, runner: HaRunner, rejections: Callable[[], NDArray[np.int64]] | None = None
    ) -> None:
        self.runner = runner
        #: Per rack and reason, the commands agents report refusing (`Ingest.cmd_rejected`).
        self.rejections = rejections

    def describe(self) -> list[Metric]:
        spec = [
            ("ha_leader", "gauge"),
            ("ha_epoch", "gauge"),
            ("ha_term_changes", "counter"),
            ("ha_terms_won", "counter"),
            ("ha_store_errors", "counter"),
        ]
        if self.rejections is not None:
            spec.append(("agent_command_rejections_reported", "gauge"))
        return describe_families(spec)

    def collect(self) -> Iterator[Metric]:
        r = self.runner
        keys = ["site", "backend", "controller"]
        labels = [r.site, r.backend, r.instance]
        leader = GaugeMetricFamily(
            "rheostat_ha_leader", "1 while this controller holds the site's lease.", labels=keys
        )
        leader.add_metric(labels, float(r.is_leader()))
        yield leader
        epoch = GaugeMetricFamily(
            "rheostat_ha_epoch", "Newest term (fencing epoch) seen in the lease store.", labels=keys
        )
        epoch.add_metric(labels, float(r.epoch()))
        yield epoch
        for name, doc, value in (
            ("ha_term_changes", "Times the site's epoch changed while watched.", r.term_changes),
            ("ha_terms_won", "Terms this controller won.", r.terms_won),
            ("ha_store_errors", "Failed calls to the lease store.", r.leadership.errors),
        ):
            family = CounterMetricFamily(f"rheostat_{name}", doc, labels=keys)
            family.add_metric(labels, value)
            yield family
        if self.rejections is not None:
            by_reason = self.rejections().sum(axis=0).tolist()
            fenced = GaugeMetricFamily(
                "rheostat_agent_command_rejections_reported",
                "Commands the site's agents report refusing since they booted, by reason "
                "(stale_epoch: fenced, from an older term).",
                labels=["site", "reason"],
            )
            for reason, count in zip(COMMAND_REJECT_REASONS, by_reason, strict=True):
                fenced.add_metric([r.site, reason], count)
            yield fenced
