"""Leadership metrics, read from the `HaRunner` at scrape time.

`rheostat_ha_leader` is 1 on the process that may command; summed over a site's controllers it
must be exactly 1 (the alert `RheostatNoLeader` fires at 0). `rheostat_ha_epoch` only grows;
`rheostat_ha_term_changes_total` counts how often it moved while this process watched.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.ha.runner import HaRunner


class HaCollector(Collector):
    """Register on the daemon's registry; yields the leadership families each scrape."""

    def __init__(self, runner: HaRunner) -> None:
        self.runner = runner

    def describe(self) -> list[Metric]:
        return []

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
