"""Prometheus metrics read from the live arrays at scrape time (no Gauge object per rack or GPU).

Names follow the project contract in the README (prefix `rheostat_`, base units: watts, joules,
seconds, hertz); the observability rules and dashboards depend on them, so renaming one is a
breaking change. Group sums are `np.bincount` over index arrays; the only per-rack Python work is
emitting samples, which prometheus_client requires, and it happens on the scrape, not the tick.
A value that is not finite (a row without a limit, a time not known yet) is left out: PromQL
handles an absent series; `+Inf` or NaN would poison every expression that reads it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.metric_families import describe_families
from controller.runtime import TICK_BUCKETS_S, Runtime
from policies.decision import N_TIERS
from policies.errors import TelemetryError

MHZ_TO_HZ = 1e6


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"rheostat_{name}", doc, labels=labels)


def _fill(
    family: GaugeMetricFamily, labels: Sequence[tuple[str, ...]], values: NDArray[Any]
) -> GaugeMetricFamily:
    """Adds one sample per label set, leaving out non-finite values.

    A missing series is what PromQL handles well (an unlimited row has no `row_limit_watts`, so
    its headroom ratio is absent, not NaN); `+Inf` or NaN would poison every expression using it.
    """
    for lab, value in zip(labels, values.tolist(), strict=True):
        if math.isfinite(value):
            family.add_metric(list(lab), value)
    return family


def _one(name: str, doc: str, labels: dict[str, str], value: float) -> GaugeMetricFamily:
    """A gauge family with at most one sample: none when `value` is not finite."""
    family = _gauge(name, doc, list(labels))
    if math.isfinite(value):
        family.add_metric(list(labels.values()), value)
    return family


#: Every family `RheostatCollector` may yield, with its type (for `describe`).
RHEOSTAT_FAMILIES: tuple[tuple[str, str], ...] = (
    ("build_info", "gauge"),
    *(
        (name, "gauge")
        for name in (
            "site_power_watts",
            "site_limit_watts",
            "site_contract_watts",
            "site_headroom_watts",
            "stale_racks",
            "racks",
            "gpus",
            "row_power_watts",
            "row_limit_watts",
            "row_headroom_watts",
            "rack_power_watts",
            "rack_limit_watts",
            "rack_breaker_rating_watts",
            "rack_headroom_watts",
            "rack_breaker_utilization_ratio",
            "rack_stale",
            "rack_cap_watts",
            "infeasible_groups",
            "dvfs_saving_watts",
            "tier_cap_watts",
            "tier_power_watts",
            "tier_gpus",
            "tier_sm_clock_max_hertz",
            "last_tick_timestamp_seconds",
            "telemetry_backlog",
            "mqtt_connected",
            "policy_last_reload_successful",
            "policy_last_reload_success_timestamp_seconds",
            "dr_active",
            "dr_target_watts",
            "dr_baseline_watts",
            "dr_shortfall_watts",
            "dr_compliance_ratio",
            "gpu_power_watts",
            "gpu_cap_watts",
            "gpu_sm_clock_hertz",
        )
    ),
    ("tick_duration_seconds", "histogram"),
    *(
        (name, "counter")
        for name in (
            "site_energy_joules",
            "ticks",
            "tick_overruns",
            "telemetry_messages",
            "telemetry_rejected",
            "telemetry_conflated",
            "commands_sent",
            "mqtt_reconnects",
            "policy_reloads",
        )
    ),
)


class RheostatCollector(Collector):
    """Yields every metric family from a `Runtime` each scrape; register it on a fresh registry."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.clock = clock

    def describe(self) -> list[Metric]:
        return describe_families(RHEOSTAT_FAMILIES)

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        yield from self._process(rt)
        yield from self._hierarchy(rt)
        yield from self._tiers(rt)
        yield from self._loop(rt)
        yield from self._demand_response(rt)
        if rt.policy.config.metrics.per_gpu:
            yield from self._per_gpu(rt)

    def _process(self, rt: Runtime) -> Iterator[Metric]:
        info = _gauge("build_info", "Rheostat build; the value is always 1.", ["version"])
        info.add_metric([rt.version], 1.0)
        yield info

    def _hierarchy(self, rt: Runtime) -> Iterator[Metric]:
        topo = rt.policy.topology
        site = topo.site
        fleet = rt.fleet
        now_s = self.clock()
        rack_lv, row_k = topo.rack_level, topo.rack_level + 1
        racks, rows = topo.levels[rack_lv], topo.levels[row_k]
        rack_power = fleet.rack_power_w
        row_of_rack = racks.parent
        row_power = np.bincount(row_of_rack, weights=rack_power, minlength=rows.size)
        site_power = float(rack_power.sum())
        dec = rt.decision
        # The core's limits are after the PSUs; racks report wall power, so limits go out as wall.
        wall = 1.0 / rt.policy.config.limits.psu_efficiency
        site_limit = wall * (
            float(dec.limit_w[-1][0]) if dec is not None else float(topo.levels[-1].usable_w[0])
        )
        row_limit = wall * (dec.limit_w[row_k] if dec is not None else rows.usable_w)
        contract = wall * float(topo.levels[-1].usable_w[0])
        stale = fleet.stale_racks(now_s, rt.policy.config.control.stale_after_s)

        s = [site]
        for name, doc, value in (
            ("site_power_watts", "Measured site power (racks' reports).", site_power),
            ("site_limit_watts", "Site limit in force: min of contract, DR, facility.", site_limit),
            ("site_contract_watts", "Utility contract for the site.", contract),
            ("site_headroom_watts", "Site limit minus measured power.", site_limit - site_power),
            ("stale_racks", "Racks without fresh telemetry.", float(stale.sum())),
            ("racks", "Racks in the topology.", float(topo.n_racks)),
            ("gpus", "GPUs in the topology.", float(topo.n_gpus)),
        ):
            yield _one(name, doc, {"site": site}, value)

        row_labels = [(site, rid) for rid in rows.ids]
        yield _fill(_gauge("row_power_watts", "Measured row power.", ["site", "row"]),
                    row_labels, row_power)  # fmt: skip
        yield _fill(_gauge("row_limit_watts", "Usable row limit; absent when the row has none.",
                           ["site", "row"]), row_labels, row_limit)  # fmt: skip
        yield _fill(_gauge("row_headroom_watts", "Row limit minus power.", ["site", "row"]),
                    row_labels, row_limit - row_power)  # fmt: skip

        rack_labels = [
            (site, rows.ids[r], rid) for rid, r in zip(racks.ids, row_of_rack.tolist(), strict=True)
        ]
        keys = ["site", "row", "rack"]
        usable = racks.usable_w * wall
        rating = racks.limit_w * wall
        rack_cap = topo.group_sum(rack_lv, dec.cap_w) if dec is not None else None
        for name, doc, values in (
            ("rack_power_watts", "Measured rack power.", rack_power),
            ("rack_limit_watts", "Usable rack limit (rating x derating).", usable),
            ("rack_breaker_rating_watts", "Rack breaker rating.", rating),
            ("rack_headroom_watts", "Usable limit minus power.", usable - rack_power),
            (
                "rack_breaker_utilization_ratio",
                "Rack power over its breaker rating.",
                rack_power / rating,
            ),
            ("rack_stale", "1 when the rack's telemetry is stale.", stale.astype(np.float64)),
        ):
            yield _fill(_gauge(name, doc, keys), rack_labels, values)
        if rack_cap is not None:
            yield _fill(
                _gauge("rack_cap_watts", "Sum of the rack's GPU caps as decided.", keys),
                rack_labels,
                rack_cap,
            )

        infeasible = _gauge(
            "infeasible_groups", "Groups whose limit even min caps exceed.", ["site", "level"]
        )
        for k, level in enumerate(topo.levels):
            count = float(dec.infeasible[k].sum()) if dec is not None else 0.0
            infeasible.add_metric([site, level.name], count)
        yield infeasible

        energy = CounterMetricFamily(
            "rheostat_site_energy_joules", "Site energy, integrated per tick.", labels=["site"]
        )
        energy.add_metric(s, rt.site_energy_j)
        yield energy
        yield _one(
            "dvfs_saving_watts",
            "Estimated power saved by clock ceilings.",
            {"site": site},
            dec.dvfs_saving_w if dec is not None else 0.0,
        )

    def _tiers(self, rt: Runtime) -> Iterator[Metric]:
        dec = rt.decision
        if dec is None:
            return
        site = rt.policy.topology.site
        tier = dec.tier.astype(np.intp)
        gpus = np.bincount(tier, minlength=N_TIERS).astype(np.float64)
        cap = np.bincount(tier, weights=dec.cap_w, minlength=N_TIERS)
        power = np.bincount(tier, weights=rt.fleet.power_w, minlength=N_TIERS)
        clock = np.bincount(tier, weights=dec.sm_clock_max_mhz, minlength=N_TIERS)
        clock_hz = np.divide(clock, gpus, out=np.zeros(N_TIERS), where=gpus > 0) * MHZ_TO_HZ
        labels = [(site, str(t)) for t in range(N_TIERS)]
        keys = ["site", "tier"]
        yield _fill(_gauge("tier_cap_watts", "Sum of caps per tier.", keys), labels, cap)
        yield _fill(_gauge("tier_power_watts", "Measured power per tier.", keys), labels, power)
        yield _fill(_gauge("tier_gpus", "GPUs per tier.", keys), labels, gpus)
        yield _fill(
            _gauge("tier_sm_clock_max_hertz", "Mean SM-clock ceiling per tier.", keys),
            labels,
            clock_hz,
        )

    def _loop(self, rt: Runtime) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "rheostat_tick_duration_seconds", "Time from tick start to commands sent."
        )
        cumulative = np.cumsum(rt.ticks.bucket_counts).tolist()
        edges = [*(str(b) for b in TICK_BUCKETS_S), "+Inf"]
        hist.add_metric([], list(zip(edges, cumulative, strict=True)), rt.ticks.duration_sum_s)
        yield hist

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"rheostat_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return _one(name, doc, {}, value)  # NaN before the first tick or reload: absent

        counters = rt.ingest.counters
        yield counter("ticks", "Control ticks completed.", rt.ticks.ticks)
        yield counter("tick_overruns", "Ticks that started late.", rt.ticks.overruns)
        yield gauge(
            "last_tick_timestamp_seconds", "When the last tick ended.", rt.ticks.last_tick_s
        )
        yield counter("telemetry_messages", "Telemetry messages received.", counters.messages)
        rejected = CounterMetricFamily(
            "rheostat_telemetry_rejected", "Telemetry rejected, by reason.", labels=["reason"]
        )
        for reason in TelemetryError.REASONS:
            rejected.add_metric([reason], counters.rejected[reason])
        yield rejected
        conflated = rt.queue.conflated if rt.queue is not None else 0
        yield counter("telemetry_conflated", "Messages replaced by a newer one.", conflated)
        yield gauge("telemetry_backlog", "Racks with a message waiting.", rt.backlog)
        yield counter("commands_sent", "Rack commands published.", rt.book.sent_total)
        yield gauge("mqtt_connected", "1 while connected.", float(rt.mqtt_connected))
        yield counter("mqtt_reconnects", "Reconnections after a loss.", rt.mqtt_reconnects)
        reloads = rt.reloads
        yield gauge(
            "policy_last_reload_successful",
            "1 when the last reload succeeded.",
            float(reloads.last_successful),
        )
        yield gauge(
            "policy_last_reload_success_timestamp_seconds",
            "When the policy was last loaded successfully.",
            reloads.last_success_s,
        )
        by_result = CounterMetricFamily(
            "rheostat_policy_reloads", "Policy reloads by result.", labels=["result"]
        )
        by_result.add_metric(["success"], reloads.successes)
        by_result.add_metric(["failure"], reloads.failures)
        yield by_result

    def _demand_response(self, rt: Runtime) -> Iterator[Metric]:
        site = rt.policy.topology.site
        dr = rt.demand_response
        active = _gauge("dr_active", "1 while a demand-response event holds.", ["site"])
        active.add_metric([site], float(dr.active) if dr is not None else 0.0)
        yield active
        if dr is None:
            return
        for name, doc, value in (
            ("dr_target_watts", "Demand-response site target.", dr.target_w),
            ("dr_baseline_watts", "Demand-response baseline.", dr.baseline_w),
            ("dr_shortfall_watts", "Power above the DR target.", dr.shortfall_w),
        ):
            if value is not None:
                yield _one(name, doc, {"site": site}, value)
        ratio = _gauge("dr_compliance_ratio", "Event compliance.", ["site", "event"])
        for event, value in dr.compliance_ratio.items():
            if math.isfinite(value):
                ratio.add_metric([site, event], value)
        yield ratio

    def _per_gpu(self, rt: Runtime) -> Iterator[Metric]:
        topo = rt.policy.topology
        rack_ids = np.array(topo.racks.ids)[topo.gpu_group[topo.rack_level]]
        labels = [
            (topo.site, rack, str(g)) for g, rack in enumerate(rack_ids.tolist())
        ]  # one series per GPU: opt-in (metrics.per_gpu) because of cardinality
        keys = ["site", "rack", "gpu"]
        yield _fill(_gauge("gpu_power_watts", "GPU power.", keys), labels, rt.fleet.power_w)
        if rt.decision is not None:
            dec = rt.decision
            yield _fill(_gauge("gpu_cap_watts", "GPU cap as decided.", keys), labels, dec.cap_w)
            yield _fill(
                _gauge("gpu_sm_clock_hertz", "GPU SM clock.", keys),
                labels,
                rt.fleet.sm_clock_mhz * MHZ_TO_HZ,
            )
