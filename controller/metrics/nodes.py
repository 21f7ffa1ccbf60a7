"""Per-GPU and per-node series from the node agents, labelled as dcgm-exporter labels its series
(`Hostname`, `UUID`, `gpu`) so Rheostat's caps join with `DCGM_FI_DEV_POWER_USAGE`. Units: W,
seconds (the node's own clock for `last_seen`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from controller.metric_families import Family, describe_families
from controller.nodes import CAP_MISMATCH_W, NodeAssembler

GPU = ("site", "rack", "Hostname", "UUID", "gpu")
NODE = ("site", "rack", "Hostname")
ENFORCED = Family(
    "gpu_enforced_cap_watts", "gauge", "Power limit the GPU enforces (read back).", GPU
)
COMMANDED = Family(
    "gpu_commanded_cap_watts",
    "gauge",
    "Power limit the node agent last applied (command or safe cap).",
    GPU,
)
MISMATCH = Family(
    "gpu_cap_mismatch",
    "gauge",
    f"1 when enforced and commanded limits differ by more than {CAP_MISMATCH_W} W.",
    GPU,
)
POWER = Family("node_gpu_power_watts", "gauge", "GPU power as its node agent reports it.", GPU)
FALLBACK = Family("node_fallback", "gauge", "1 while the node agent is on its safe caps.", NODE)
LAST_SEEN = Family(
    "node_last_seen_timestamp_seconds",
    "gauge",
    "Timestamp of the node's last accepted message (its own clock).",
    NODE,
)
COMMANDS_REJECTED = Family(
    "node_commands_rejected",
    "counter",
    "Commands the node agent refused, by reason (as it reports them).",
    (*NODE, "reason"),
)
TELEMETRY_REJECTED = Family(
    "node_telemetry_rejected", "counter", "Node messages dropped, by reason.", ("site", "reason")
)
FAMILIES: tuple[Family, ...] = (
    ENFORCED, COMMANDED, MISMATCH, POWER, FALLBACK, LAST_SEEN, COMMANDS_REJECTED,
    TELEMETRY_REJECTED,
)  # fmt: skip


class NodesCollector(Collector):
    """Per-GPU and per-node series from the node agents, with dcgm-exporter's labels."""

    def __init__(self, nodes: NodeAssembler) -> None:
        self.nodes = nodes

    def describe(self) -> list[Metric]:
        return describe_families(FAMILIES)

    def collect(self) -> Iterator[Metric]:
        a = self.nodes
        site = a.site
        known = np.flatnonzero(a.gpu_index >= 0)
        topo = a.topology
        rack_ids = topo.racks.ids
        gpu_rack = topo.gpu_group[topo.rack_level]
        enforced, commanded = ENFORCED.gauge(), COMMANDED.gauge()
        mismatch, power = MISMATCH.gauge(), POWER.gauge()
        for row in known.tolist():
            labels = [
                site,
                rack_ids[gpu_rack[row]],
                a.host[row],
                a.uuid[row],
                str(a.gpu_index[row]),
            ]
            enforced.add_metric(labels, float(a.cap_w[row]))
            power.add_metric(labels, float(a.power_w[row]))
            cmd = float(a.cap_cmd_w[row])
            if np.isfinite(cmd):
                commanded.add_metric(labels, cmd)
                mismatch.add_metric(labels, float(abs(cmd - a.cap_w[row]) > CAP_MISMATCH_W))
        yield from (enforced, commanded, mismatch, power)
        fallback, last, rejected = FALLBACK.gauge(), LAST_SEEN.gauge(), COMMANDS_REJECTED.counter()
        for node in a.inventory.nodes:
            state = a.nodes[node.hostname]
            if state.seq < 0:
                continue
            labels = [site, node.rack, node.hostname]
            fallback.add_metric(labels, float(state.fallback))
            last.add_metric(labels, state.ts_s)
            for reason, count in state.cmd_rejected.items():
                rejected.add_metric([*labels, reason], float(count))
        yield from (fallback, last, rejected)
        dropped = TELEMETRY_REJECTED.counter()
        for reason, count in a.rejected.items():
            dropped.add_metric([site, reason], float(count))
        yield dropped
