"""`RheostatCollector`: the daemon's families, read from the live arrays at scrape time (no Gauge
object per rack or GPU).

Names follow the project contract in the README (prefix `rheostat_`, base units: watts, joules,
seconds, hertz); the observability rules and dashboards depend on them, so renaming one is a
breaking change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from controller.metric_families import Family, describe_families
from controller.metrics import fleet, loop
from controller.runtime import Runtime

#: Every family `RheostatCollector` may yield.
FAMILIES: tuple[Family, ...] = (*loop.FAMILIES, *fleet.FAMILIES)


class RheostatCollector(Collector):
    """Yields every metric family from a `Runtime` each scrape; register it on a fresh registry.

    `clock` (s) decides which racks are stale; the daemon passes its monotonic clock, so a
    wall-clock step stales nothing.
    """

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.clock = clock

    def describe(self) -> list[Metric]:
        return describe_families(FAMILIES)

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        yield from loop.process(rt)
        yield from fleet.hierarchy(rt, self.clock())
        yield from fleet.tiers(rt)
        yield from loop.loop(rt)
        yield from loop.demand_response(rt)
        if rt.policy.config.metrics.per_gpu:
            yield from fleet.per_gpu(rt)
