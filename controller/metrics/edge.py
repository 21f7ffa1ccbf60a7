"""Metrics of the network edge: what was refused, and what the agents say about our commands.

- `rheostat_messages_rejected_total{site,kind,reason}`: refused messages beside telemetry (grid
  events and job reports by their decoders' reasons) and, as `internal_error`, any message of any
  kind whose handling raised: a crash-inducing input shows up as a rising counter while the loop
  goes on.
- `rheostat_agent_command_rejections_total{site,reason}`: commands the rack agents refused, from
  the cumulative counts their telemetry carries (`wire.COMMAND_REJECT_REASONS`). Rising
  `stale_epoch`/`stale_seq` means agents are ignoring this controller.
- `rheostat_racks_on_fallback{site}`: racks whose agents are on their safe caps because their last
  command's TTL ran out.
- `rheostat_telemetry_rebased_total{site}`: rack sequences re-based after a stale period (a rack
  that a poisoned sequence would otherwise have locked out).
- `rheostat_workload_classes_overflow_total{site}`: class names past `telemetry.max_classes`,
  counted as the unknown class.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from controller import wire
from controller.metric_families import Family, describe_families
from controller.runtime import Runtime
from controller.wire import MessageRejections

SITE = ("site",)
MESSAGES_REJECTED = Family(
    "messages_rejected",
    "counter",
    "Messages refused (or whose handling failed: internal_error), by kind and reason.",
    ("site", "kind", "reason"),
)
AGENT_REJECTIONS = Family(
    "agent_command_rejections",
    "counter",
    "Commands rack agents refused, by reason (from their telemetry).",
    ("site", "reason"),
)
RACKS_ON_FALLBACK = Family(
    "racks_on_fallback",
    "gauge",
    "Racks whose agents report being on their safe caps (command TTL ran out).",
    SITE,
)
TELEMETRY_REBASED = Family(
    "telemetry_rebased", "counter", "Rack sequences re-based after a stale period.", SITE
)
CLASSES_OVERFLOW = Family(
    "workload_classes_overflow",
    "counter",
    "Workload-class names past telemetry.max_classes, counted as unknown.",
    SITE,
)
FAMILIES: tuple[Family, ...] = (
    MESSAGES_REJECTED, AGENT_REJECTIONS, RACKS_ON_FALLBACK, TELEMETRY_REBASED, CLASSES_OVERFLOW
)  # fmt: skip


class EdgeCollector(Collector):
    """Reads the daemon's edge counters at scrape time; register it on the daemon's registry."""

    def __init__(self, runtime: Runtime, rejections: MessageRejections) -> None:
        self.runtime = runtime
        self.rejections = rejections

    def describe(self) -> list[Metric]:
        return describe_families(FAMILIES)

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        site = rt.policy.site
        rejected = MESSAGES_REJECTED.counter()
        for (kind, reason), count in sorted(self.rejections.counts.items()):
            rejected.add_metric([site, kind, reason], float(count))
        yield rejected
        agents = rt.ingest.agents
        refused = AGENT_REJECTIONS.counter()
        for reason, total in zip(
            wire.COMMAND_REJECT_REASONS, agents.rejected_total.tolist(), strict=True
        ):
            refused.add_metric([site, reason], total)
        yield refused
        fallback = RACKS_ON_FALLBACK.gauge()
        fallback.add_metric([site], float(agents.fallback.sum()))
        yield fallback
        rebased = TELEMETRY_REBASED.counter()
        rebased.add_metric([site], float(rt.ingest.counters.rebased))
        yield rebased
        overflow = CLASSES_OVERFLOW.counter()
        overflow.add_metric([site], float(rt.classes.overflow))
        yield overflow
