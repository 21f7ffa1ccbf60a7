"""Describing a collector's metric families without collecting them.

prometheus_client's registry learns the names a collector exposes from its `describe()`; with
them it refuses a second collector (or one of its default process, platform and GC collectors)
that would expose the same series, instead of serving a scrape Prometheus rejects.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric


def describe_families(
    spec: Iterable[tuple[str, str]], *, prefix: str = "rheostat_"
) -> list[Metric]:
    """Sample-free families named `prefix + name`, one per (name, type) pair of `spec`.

    Counters and histograms are named without their suffixes (`_total`, `_bucket`...): the
    registry adds those itself when it checks for collisions.
    """
    return [Metric(prefix + name, "", kind) for name, kind in spec]
