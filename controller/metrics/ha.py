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
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from controller.ha.runner import HaRunner
from controller.metric_families import Family, describe_families
from controller.wire import COMMAND_REJECT_REASONS

KEYS = ("site", "backend", "controller")
LEADER = Family("ha_leader", "gauge", "1 while this controller holds the site's lease.", KEYS)
EPOCH = Family("ha_epoch", "gauge", "Newest term (fencing epoch) seen in the lease store.", KEYS)
TERM_CHANGES = Family(
    "ha_term_changes", "counter", "Times the site's epoch changed while watched.", KEYS
)
TERMS_WON = Family("ha_terms_won", "counter", "Terms this controller won.", KEYS)
STORE_ERRORS = Family("ha_store_errors", "counter", "Failed calls to the lease store.", KEYS)
REJECTIONS_REPORTED = Family(
    "agent_command_rejections_reported",
    "gauge",
    "Commands the site's agents report refusing since they booted, by reason "
    "(stale_epoch: fenced, from an older term).",
    ("site", "reason"),
)


class HaCollector(Collector):
    """Register on the daemon's registry; yields the leadership families each scrape."""

    def __init__(
        self, runner: HaRunner, rejections: Callable[[], NDArray[np.int64]] | None = None
    ) -> None:
        self.runner = runner
        #: Per rack and reason, the commands agents report refusing (`Ingest.cmd_rejected`).
        self.rejections = rejections

    def families(self) -> tuple[Family, ...]:
        always = (LEADER, EPOCH, TERM_CHANGES, TERMS_WON, STORE_ERRORS)
        return always if self.rejections is None else (*always, REJECTIONS_REPORTED)

    def describe(self) -> list[Metric]:
        return describe_families(self.families())

    def collect(self) -> Iterator[Metric]:
        r = self.runner
        labels = [r.site, r.backend, r.instance]
        leader = LEADER.gauge()
        leader.add_metric(labels, float(r.is_leader()))
        yield leader
        epoch = EPOCH.gauge()
        epoch.add_metric(labels, float(r.epoch()))
        yield epoch
        for family, value in (
            (TERM_CHANGES, r.term_changes),
            (TERMS_WON, r.terms_won),
            (STORE_ERRORS, r.leadership.errors),
        ):
            counter = family.counter()
            counter.add_metric(labels, value)
            yield counter
        if self.rejections is not None:
            by_reason = self.rejections().sum(axis=0).tolist()
            fenced = REJECTIONS_REPORTED.gauge()
            for reason, count in zip(COMMAND_REJECT_REASONS, by_reason, strict=True):
                fenced.add_metric([r.site, reason], count)
            yield fenced
