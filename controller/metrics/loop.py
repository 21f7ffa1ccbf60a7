"""The control loop's own health as metrics: build, ticks, telemetry intake, MQTT, policy
reloads and demand response. Units: seconds; counts are counters.

A value that is not finite (a time not known before the first tick or reload) is left out:
PromQL handles an absent series; NaN would poison every expression that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from prometheus_client.core import Metric

from controller.metric_families import Family
from controller.runtime import TICK_BUCKETS_S, Runtime
from policies.errors import TelemetryError

BUILD_INFO = Family("build_info", "gauge", "Rheostat build; the value is always 1.", ("version",))
TICK_DURATION = Family(
    "tick_duration_seconds", "histogram", "Time from tick start to commands sent."
)
TICKS = Family("ticks", "counter", "Control ticks completed.")
TICK_OVERRUNS = Family("tick_overruns", "counter", "Ticks that started late.")
LAST_TICK = Family("last_tick_timestamp_seconds", "gauge", "When the last tick ended.")
TELEMETRY_MESSAGES = Family("telemetry_messages", "counter", "Telemetry messages received.")
TELEMETRY_REJECTED = Family(
    "telemetry_rejected", "counter", "Telemetry rejected, by reason.", ("reason",)
)
TELEMETRY_CONFLATED = Family("telemetry_conflated", "counter", "Messages replaced by a newer one.")
TELEMETRY_BACKLOG = Family("telemetry_backlog", "gauge", "Racks with a message waiting.")
COMMANDS_SENT = Family("commands_sent", "counter", "Rack commands published.")
PROTECTIVE_CUTS = Family(
    "protective_cuts", "counter", "Commands resent between ticks to racks over their caps."
)
MQTT_CONNECTED = Family("mqtt_connected", "gauge", "1 while connected.")
MQTT_RECONNECTS = Family("mqtt_reconnects", "counter", "Reconnections after a loss.")
RELOAD_OK = Family("policy_last_reload_successful", "gauge", "1 when the last reload succeeded.")
RELOAD_OK_AT = Family(
    "policy_last_reload_success_timestamp_seconds",
    "gauge",
    "When the policy was last loaded successfully.",
)
RELOADS = Family("policy_reloads", "counter", "Policy reloads by result.", ("result",))
DR_ACTIVE = Family("dr_active", "gauge", "1 while a demand-response event holds.", ("site",))
DR_TARGET = Family("dr_target_watts", "gauge", "Demand-response site target.", ("site",))
DR_BASELINE = Family("dr_baseline_watts", "gauge", "Demand-response baseline.", ("site",))
DR_SHORTFALL = Family("dr_shortfall_watts", "gauge", "Power above the DR target.", ("site",))
DR_COMPLIANCE = Family("dr_compliance_ratio", "gauge", "Event compliance.", ("site", "event"))

FAMILIES: tuple[Family, ...] = (
    BUILD_INFO, TICK_DURATION, TICKS, TICK_OVERRUNS, LAST_TICK,
    TELEMETRY_MESSAGES, TELEMETRY_REJECTED, TELEMETRY_CONFLATED, TELEMETRY_BACKLOG,
    COMMANDS_SENT, PROTECTIVE_CUTS, MQTT_CONNECTED, MQTT_RECONNECTS,
    RELOAD_OK, RELOAD_OK_AT, RELOADS,
    DR_ACTIVE, DR_TARGET, DR_BASELINE, DR_SHORTFALL, DR_COMPLIANCE,
)  # fmt: skip


def _count(family: Family, value: float) -> Metric:
    counter = family.counter()
    counter.add_metric([], value)
    return counter


def process(rt: Runtime) -> Iterator[Metric]:
    info = BUILD_INFO.gauge()
    info.add_metric([rt.version], 1.0)
    yield info


def loop(rt: Runtime) -> Iterator[Metric]:
    """Tick timing, telemetry intake, commands, the MQTT session and policy reloads."""
    hist = TICK_DURATION.histogram()
    cumulative = np.cumsum(rt.ticks.bucket_counts).tolist()
    edges = [*(str(b) for b in TICK_BUCKETS_S), "+Inf"]
    hist.add_metric([], list(zip(edges, cumulative, strict=True)), rt.ticks.duration_sum_s)
    yield hist

    counters = rt.ingest.counters
    yield _count(TICKS, rt.ticks.ticks)
    yield _count(TICK_OVERRUNS, rt.ticks.overruns)
    yield LAST_TICK.one([], rt.ticks.last_tick_s)
    yield _count(TELEMETRY_MESSAGES, counters.messages)
    rejected = TELEMETRY_REJECTED.counter()
    for reason in TelemetryError.REASONS:
        rejected.add_metric([reason], counters.rejected[reason])
    yield rejected
    yield _count(TELEMETRY_CONFLATED, rt.queue.conflated if rt.queue is not None else 0)
    yield TELEMETRY_BACKLOG.one([], rt.backlog)
    yield _count(COMMANDS_SENT, rt.book.sent_total)
    yield _count(PROTECTIVE_CUTS, rt.book.protective_total)
    yield MQTT_CONNECTED.one([], float(rt.mqtt_connected))
    yield _count(MQTT_RECONNECTS, rt.mqtt_reconnects)
    reloads = rt.reloads
    yield RELOAD_OK.one([], float(reloads.last_successful))
    yield RELOAD_OK_AT.one([], reloads.last_success_s)
    by_result = RELOADS.counter()
    by_result.add_metric(["success"], reloads.successes)
    by_result.add_metric(["failure"], reloads.failures)
    yield by_result


def demand_response(rt: Runtime) -> Iterator[Metric]:
    """Whether an event holds (always exported), and its target, baseline, shortfall (W) and
    per-event compliance while a demand-response source runs."""
    site = rt.policy.topology.site
    dr = rt.demand_response
    active = DR_ACTIVE.gauge()
    active.add_metric([site], float(dr.active) if dr is not None else 0.0)
    yield active
    if dr is None:
        return
    for family, value in (
        (DR_TARGET, dr.target_w),
        (DR_BASELINE, dr.baseline_w),
        (DR_SHORTFALL, dr.shortfall_w),
    ):
        if value is not None:
            yield family.one([site], value)
    ratio = DR_COMPLIANCE.gauge()
    for event, value in dr.compliance_ratio.items():
        if math.isfinite(value):
            ratio.add_metric([site, event], value)
    yield ratio
