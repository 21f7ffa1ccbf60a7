"""Node agents' telemetry assembled into the rack-level messages ingest already takes.

Each node agent (`agent/`) publishes its server's GPUs on `telemetry/<rack>/<node>`; the
inventory says where those GPUs fall in the rack's arrays. `NodeAssembler.handle` validates a
node message (`wire.decode_node_telemetry`), checks it against the inventory (known host, its
rack, its GPU count, its UUIDs where listed) and its sequence (a new `boot` restarts it), and
writes it into the rack's buffers. Once every node of a rack has reported since the rack was last
assembled, the rack's message is built and handed to ingest as if a rack agent had sent it, so
the decision core and everything after it are unchanged. A rack with a silent node is therefore
never assembled and goes stale: the controller treats it as it treats any silent rack.

The rack message carries the nodes' command state too (the oldest command any node applied, the
sum of their refusals, on its safe caps if any node is), so the controller's rack-level views of
its agents (`rheostat_racks_on_fallback`, refused commands) cover node agents as well.

Rack power: the sum of the nodes' own meters (`node_power_w`) where every node has one, else GPU
power plus the non-GPU draw the topology gives the servers those GPUs belong to.

The per-GPU identities (hostname, UUID, on-host index) and the agents' commanded and enforced
caps are kept for the metrics (`controller.metrics.nodes.NodesCollector`), labelled as
dcgm-exporter labels its series (`Hostname`, `UUID`, `gpu`), so Rheostat's caps join with
`DCGM_FI_DEV_POWER_USAGE`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import structlog
from numpy.typing import NDArray

from controller import wire
from controller.inventory import Inventory, InventoryNode
from policies.errors import TelemetryError
from policies.gpu_models import model_table
from policies.topology import Topology

log = structlog.get_logger("rheostat.nodes")

#: Reasons a node message is dropped, beyond the telemetry decoder's own.
NODE_REASONS = (*TelemetryError.REASONS, "unknown_node", "wrong_rack", "uuid_mismatch")
#: Enforced and commanded caps further apart than this count as a mismatch. Units: W.
CAP_MISMATCH_W = 2.0
#: Reported limit constraints this far from the topology's are taken (W); ranges outside the
#: plausibility bounds (a factor of the table's: min in [0.5 min, max], max in [min, 1.5 max])
#: are ignored and counted, so a broken or hostile agent cannot widen its GPUs' range at will.
RANGE_TOLERANCE_W = 0.5


@dataclass(eq=False, kw_only=True)
class _NodeState:
    boot: str = ""
    seq: int = -1
    fresh: bool = False
    ts_s: float = -np.inf
    node_power_w: float = np.nan
    hostname: str = ""
    cmd_epoch: int = 0
    cmd_seq: int = 0
    fallback: bool = False
    cmd_rejected: dict[str, int] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    class_idx: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))


class NodeAssembler:
    """Node messages in, rack messages out (through `forward(topic, payload)`)."""

    def __init__(
        self,
        *,
        site: str,
        topology: Topology,
        inventory: Inventory,
        forward: Callable[[str, bytes], bool],
    ) -> None:
        self.site = site
        self.forward = forward
        self.prefix = f"{wire.TOPIC_ROOT}/{site}/telemetry/"
        #: The assembler is the racks' "agent" as ingest sees it: a new id per controller start,
        #: so its rack sequences may start again at 1.
        self.boot = uuid.uuid4().hex[:16]
        self.rejected: dict[str, int] = dict.fromkeys(NODE_REASONS, 0)
        self.accepted = 0
        self.assembled = 0
        self.set_policy(topology, inventory)

    def set_policy(self, topology: Topology, inventory: Inventory) -> None:
        """A (re)loaded policy: buffers are rebuilt; every rack waits for all its nodes again.

        Rack sequence numbers carry over while the racks stay the same, so ingest keeps
        accepting the assembled messages.
        """
        old_seq = getattr(self, "rack_seq", None)
        self.topology, self.inventory = topology, inventory
        # The catalog's figures, not the topology's (which may hold earlier reports): plausibility
        # is always judged against the datasheet, so reports cannot ratchet a range outwards.
        self.table_min_cap_w = model_table("min_cap_w")[topology.gpu_model]
        self.table_max_cap_w = model_table("max_cap_w")[topology.gpu_model]
        self.ranges_ignored = getattr(self, "ranges_ignored", 0)
        self._ranges_dirty = False
        n = topology.n_gpus
        self.power_w, self.sm_clock_mhz = np.zeros(n), np.zeros(n)
        self.util, self.mem_util = np.zeros(n), np.zeros(n)
        self.temp_c, self.cap_w = np.zeros(n), np.zeros(n)
        self.cap_cmd_w = np.full(n, np.nan)
        self.min_cap_w, self.max_cap_w = np.full(n, np.nan), np.full(n, np.nan)
        self.uuid: list[str] = [""] * n
        self.gpu_index = np.full(n, -1, np.int64)
        self.host = [""] * n
        old_nodes: dict[str, _NodeState] = getattr(self, "nodes", {})
        self.nodes: dict[str, _NodeState] = {
            node.hostname: old_nodes.get(node.hostname, _NodeState()) for node in inventory.nodes
        }
        for state in self.nodes.values():
            state.fresh = False
        self.rack_seq = np.zeros(topology.n_racks, np.int64)
        if old_seq is not None and old_seq.shape == self.rack_seq.shape:
            self.rack_seq = old_seq
        overhead = topology.levels[0].overhead_w
        self._overhead_w = {
            node.hostname: self._node_overhead(node, overhead) for node in inventory.nodes
        }

    def _node_overhead(self, node: InventoryNode, overhead: NDArray[np.float64]) -> float:
        rack = self.topology.rack_index.get(node.rack)
        if rack is None:
            return 0.0
        lo = int(self.topology.rack_offsets[rack]) + node.first
        servers = np.unique(self.topology.gpu_server[lo : lo + node.gpus])
        return float(overhead[servers].sum())

    def handle(self, topic: str, payload: bytes) -> bool:
        """Take a node message; False for any other topic. Never raises."""
        if not topic.startswith(self.prefix):
            return False
        parts = topic[len(self.prefix) :].split("/")
        if len(parts) != 2:
            return False
        try:
            self._apply(parts[0], parts[1], payload)
        except TelemetryError as exc:
            self.rejected[exc.reason] += 1
        except _Rejected as exc:
            self.rejected[exc.reason] += 1
            log.warning("node telemetry rejected", reason=exc.reason, node=parts[1])
        return True

    def _apply(self, rack_id: str, host: str, payload: bytes) -> None:
        node = self.inventory.by_host.get(host)
        if node is None:
            raise _Rejected("unknown_node")
        if node.rack != rack_id:
            raise _Rejected("wrong_rack")
        msg = wire.decode_node_telemetry(payload, rack=rack_id, node=host)
        if msg.n_gpus != node.gpus:
            raise TelemetryError("wrong_length", f"{msg.n_gpus} GPUs, inventory {node.gpus}")
        if node.uuids is not None and msg.uuid != node.uuids:
            raise _Rejected("uuid_mismatch")
        state = self.nodes[host]
        if msg.boot == state.boot and msg.seq <= state.seq:
            raise TelemetryError("stale_sequence", f"seq {msg.seq} after {state.seq}")
        rack = self.topology.rack_index[rack_id]
        lo = int(self.topology.rack_offsets[rack]) + node.first
        rows = slice(lo, lo + node.gpus)
        self.power_w[rows] = msg.power_w
        self.sm_clock_mhz[rows] = msg.sm_clock_mhz
        self.util[rows] = msg.util
        self.mem_util[rows] = msg.mem_util
        self.temp_c[rows] = msg.temp_c
        self.cap_w[rows] = msg.cap_w
        self.cap_cmd_w[rows] = msg.cap_cmd_w
        self._take_ranges(rows, msg.min_cap_w, msg.max_cap_w)
        self.uuid[rows] = list(msg.uuid)
        self.gpu_index[rows] = msg.gpu_index
        self.host[rows] = [host] * node.gpus
        state.boot, state.seq, state.fresh, state.ts_s = msg.boot, msg.seq, True, msg.ts_s
        state.node_power_w, state.hostname = msg.node_power_w, msg.hostname
        state.cmd_epoch, state.cmd_seq, state.fallback = msg.cmd_epoch, msg.cmd_seq, msg.fallback
        state.cmd_rejected = msg.cmd_rejected
        state.classes, state.class_idx = msg.classes, msg.class_idx
        self.accepted += 1
        siblings = self.inventory.by_rack[rack_id]
        if all(self.nodes[n.hostname].fresh for n in siblings):
            self._assemble(rack, rack_id, siblings)

    def _assemble(self, rack: int, rack_id: str, siblings: tuple[InventoryNode, ...]) -> None:
        rows = self.topology.rack_slice(rack)
        names: list[str] = []
        class_idx: list[NDArray[np.int64]] = []
        power_w = 0.0
        meters = all(np.isfinite(self.nodes[n.hostname].node_power_w) for n in siblings)
        for n in siblings:
            state = self.nodes[n.hostname]
            state.fresh = False
            codes = []
            for name in state.classes:
                if name not in names:
                    names.append(name)
                codes.append(names.index(name))
            class_idx.append(np.asarray(codes, np.int64)[state.class_idx])
            if meters:
                power_w += state.node_power_w
            else:
                lo = int(self.topology.rack_offsets[rack]) + n.first
                power_w += float(self.power_w[lo : lo + n.gpus].sum())
                power_w += self._overhead_w[n.hostname]
        self.rack_seq[rack] += 1
        msg = wire.Telemetry(
            rack=rack_id,
            seq=int(self.rack_seq[rack]),
            ts_s=max(self.nodes[n.hostname].ts_s for n in siblings),
            power_w=self.power_w[rows],
            sm_clock_mhz=self.sm_clock_mhz[rows],
            util=self.util[rows],
            mem_util=self.mem_util[rows],
            temp_c=self.temp_c[rows],
            cap_w=self.cap_w[rows],
            classes=tuple(names),
            class_idx=np.concatenate(class_idx),
            rack_power_w=min(power_w, wire.RACK_POWER_RANGE_W[1]),
            boot=self.boot,
            # The rack as a whole: the oldest command any node applied, every node's refusals,
            # and on its safe caps if any node is.
            cmd_epoch=min(self.nodes[n.hostname].cmd_epoch for n in siblings),
            cmd_seq=min(self.nodes[n.hostname].cmd_seq for n in siblings),
            cmd_rejected={
                reason: count
                for reason in wire.COMMAND_REJECT_REASONS
                if (
                    count := sum(
                        self.nodes[n.hostname].cmd_rejected.get(reason, 0) for n in siblings
                    )
                )
            },
            fallback=any(self.nodes[n.hostname].fallback for n in siblings),
        )
        self.assembled += 1
        self.forward(wire.telemetry_topic(self.site, rack_id), wire.encode_telemetry(msg))

    def routed(self, inner: Callable[[str, bytes], bool]) -> Callable[[str, bytes], bool]:
        """`inner` with node messages taken here first."""

        def handle(topic: str, payload: bytes) -> bool:
            return self.handle(topic, payload) or inner(topic, payload)

        return handle

    def _take_ranges(self, rows: slice, lo: NDArray[np.float64], hi: NDArray[np.float64]) -> None:
        t_lo, t_hi = self.table_min_cap_w[rows], self.table_max_cap_w[rows]
        plausible = (lo >= 0.5 * t_lo) & (lo <= hi) & (hi >= t_lo) & (hi <= 1.5 * t_hi) & (lo > 0)
        if not plausible.all():
            self.ranges_ignored += int((~plausible).sum())
        lo, hi = np.where(plausible, lo, t_lo), np.where(plausible, hi, t_hi)
        self.min_cap_w[rows], self.max_cap_w[rows] = lo, hi
        in_force_lo, in_force_hi = (
            self.topology.gpu_min_cap_w[rows],
            self.topology.gpu_max_cap_w[rows],
        )
        if (np.abs(lo - in_force_lo) > RANGE_TOLERANCE_W).any() or (
            np.abs(hi - in_force_hi) > RANGE_TOLERANCE_W
        ).any():
            self._ranges_dirty = True

    def reported_topology(self) -> Topology | None:
        """The topology with the agents' reported limit constraints in place of the table's,
        when they differ from the one in force (else None); the daemon swaps it in.

        Reported ranges take precedence over the model table: a GPU whose board or firmware
        allows another range than its model's datasheet is budgeted and commanded within what it
        accepts. GPUs no agent has reported keep the table's figures.
        """
        if not self._ranges_dirty:
            return None
        self._ranges_dirty = False
        lo = np.where(np.isnan(self.min_cap_w), self.topology.gpu_min_cap_w, self.min_cap_w)
        hi = np.where(np.isnan(self.max_cap_w), self.topology.gpu_max_cap_w, self.max_cap_w)
        return replace(self.topology, gpu_min_cap_w=lo, gpu_max_cap_w=hi)


class _Rejected(Exception):  # internal control flow: never escapes `handle`
    def __init__(self, reason: str) -> None:
        self.reason = reason
