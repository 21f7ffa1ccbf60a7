"""Metric families declared once: what a collector describes is what it yields.

prometheus_client's registry learns the names a collector exposes from its `describe()`; with
them it refuses a second collector (or one of its default process, platform and GC collectors)
that would expose the same series, instead of serving a scrape Prometheus rejects. Each
collector lists its `Family` specs; `describe()` returns them without samples and `collect()`
builds its families from the same specs, so names, types, help texts and label names cannot
drift apart between the two.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from numpy.typing import NDArray
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

#: Every family the daemon exports is named `rheostat_...` (the README's naming contract).
PREFIX = "rheostat_"

Kind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: name without `PREFIX` (counters without `_total`), type, help text
    and label names, in the order samples give their values."""

    name: str
    kind: Kind
    doc: str
    labels: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return PREFIX + self.name

    def new(self) -> Metric:
        """An empty family of the right type: what `describe()` returns."""
        if self.kind == "counter":
            return self.counter()
        if self.kind == "histogram":
            return self.histogram()
        return self.gauge()

    def gauge(self) -> GaugeMetricFamily:
        assert self.kind == "gauge", self
        return GaugeMetricFamily(self.full_name, self.doc, labels=list(self.labels))

    def counter(self) -> CounterMetricFamily:
        assert self.kind == "counter", self
        return CounterMetricFamily(self.full_name, self.doc, labels=list(self.labels))

    def histogram(self) -> HistogramMetricFamily:
        assert self.kind == "histogram", self
        return HistogramMetricFamily(self.full_name, self.doc, labels=list(self.labels))

    def one(self, labels: Sequence[str], value: float) -> GaugeMetricFamily:
        """A gauge with at most one sample: none when `value` is not finite (NaN before the
        first tick or reload, a limit that does not exist), so the series is absent."""
        family = self.gauge()
        if math.isfinite(value):
            family.add_metric(list(labels), value)
        return family

    def fill(self, labels: Sequence[Sequence[str]], values: NDArray[Any]) -> GaugeMetricFamily:
        """A gauge with one sample per label set, leaving out non-finite values.

        A missing series is what PromQL handles well (an unlimited row has no `row_limit_watts`,
        so its headroom ratio is absent, not NaN); `+Inf` or NaN would poison every expression
        using it.
        """
        family = self.gauge()
        for lab, value in zip(labels, values.tolist(), strict=True):
            if math.isfinite(value):
                family.add_metric(list(lab), value)
        return family


def describe_families(
    spec: Iterable[Family | tuple[str, str]], *, prefix: str = PREFIX
) -> list[Metric]:
    """Sample-free families for `describe()`.

    A `Family` gives its full description; a bare `(name, type)` pair (named `prefix + name`)
    gives the name and type only, which is all the registry's collision check reads.
    Counters and histograms are named without their suffixes (`_total`, `_bucket`...): the
    registry adds those itself when it checks for collisions.
    """
    out: list[Metric] = []
    for item in spec:
        if isinstance(item, Family):
            out.append(item.new())
        else:
            name, kind = item
            out.append(Metric(prefix + name, "", kind))
    return out
