"""NodeAssembler: node messages checked against the inventory and assembled into rack messages."""

from __future__ import annotations

import numpy as np
import pytest

from controller import wire
from controller.inventory import parse_inventory
from controller.nodes import NodeAssembler
from controller.policy_file import parse_policy

POLICY = """limits: {contract_w: 100000}
site:
  name: dc
  topology:
    rows:
      - id: row1
        racks:
          - id: r1
            breaker_w: 30000
            servers:
              - {model: H100-SXM5, gpus: 2, overhead_w: 1000}
              - {model: H100-SXM5, gpus: 2, overhead_w: 1000}
"""
INVENTORY = """nodes:
  - {hostname: n1, rack: r1, gpus: 2, uuids: [U0, U1]}
  - {hostname: n2, rack: r1, gpus: 2}
"""


def msg(node: str, seq: int, *, boot: str = "b1", power: float = 500.0, **over) -> bytes:
    fields = {
        "rack": "r1",
        "node": node,
        "hostname": f"{node}.example",
        "seq": seq,
        "ts_s": 1000.0 + seq,
        "boot": boot,
        "gpu_index": (0, 1),
        "uuid": ("U0", "U1") if node == "n1" else ("V0", "V1"),
        "pci_bus_id": ("a", "b"),
        "name": ("NVIDIA H100 80GB HBM3",) * 2,
        "power_w": np.full(2, power),
        "power_instant_w": np.full(2, np.nan),
        "energy_j": np.full(2, np.nan),
        "sm_clock_mhz": np.full(2, 1980.0),
        "util": np.full(2, 0.9),
        "mem_util": np.full(2, 0.3),
        "temp_c": np.full(2, 60.0),
        "cap_w": np.full(2, 700.0),
        "cap_cmd_w": np.full(2, 650.0),
        "sm_clock_max_mhz": np.full(2, 1980.0),
        "min_cap_w": np.full(2, 200.0),
        "max_cap_w": np.full(2, 700.0),
        "classes": ("training",) if node == "n1" else ("inference",),
        "class_idx": np.zeros(2, np.int64),
        "node_power_w": np.nan,
        "cmd_epoch": 0,
        "cmd_seq": 0,
        "cmd_rejected": {},
        "fallback": False,
    }
    return wire.encode_node_telemetry(wire.NodeTelemetry(**(fields | over)))


@pytest.fixture
def assembler() -> tuple[NodeAssembler, list[wire.Telemetry]]:
    policy = parse_policy(POLICY, source="p.yaml")
    out: list[wire.Telemetry] = []

    def forward(topic: str, payload: bytes) -> bool:
        out.append(wire.decode_telemetry(payload, rack=wire.rack_from_topic(topic)))
        return True

    nodes = NodeAssembler(
        site="dc",
        topology=policy.topology,
        inventory=parse_inventory(INVENTORY, source="n.yaml"),
        forward=forward,
    )
    return nodes, out


def topic(node: str, rack: str = "r1") -> str:
    return wire.node_telemetry_topic("dc", rack, node)


def test_a_rack_is_assembled_once_every_node_reported(assembler):
    nodes, out = assembler
    assert nodes.handle(topic("n1"), msg("n1", 1))
    assert out == []
    assert nodes.handle(topic("n2"), msg("n2", 1, power=300.0))
    (rack,) = out
    assert rack.power_w.tolist() == [500.0, 500.0, 300.0, 300.0]
    assert [rack.classes[i] for i in rack.class_idx] == ["training"] * 2 + ["inference"] * 2
    assert rack.rack_power_w == 1600.0 + 2 * 1000.0  # GPU power plus the servers' overhead
    nodes.handle(topic("n1"), msg("n1", 2, node_power_w=1500.0))
    nodes.handle(topic("n2"), msg("n2", 2, node_power_w=900.0))
    assert out[-1].rack_power_w == 2400.0  # every node metered: the meters
    assert out[-1].seq == 2
    assert out[-1].boot == nodes.boot
    assert not out[-1].fallback
    nodes.handle(topic("n1"), msg("n1", 3, cmd_epoch=2, cmd_seq=9, cmd_rejected={"stale_seq": 2}))
    nodes.handle(
        topic("n2"),
        msg("n2", 3, cmd_epoch=2, cmd_seq=7, fallback=True, cmd_rejected={"stale_seq": 1}),
    )
    rack = out[-1]
    assert (rack.cmd_epoch, rack.cmd_seq, rack.fallback) == (2, 7, True)  # the rack's oldest
    assert rack.cmd_rejected == {"stale_seq": 3}
    assert not nodes.handle("rheostat/v1/dc/telemetry/r1", b"{}")  # rack level: not ours


def test_node_messages_that_do_not_fit_the_inventory_are_counted(assembler):
    nodes, out = assembler
    nodes.handle(topic("zz"), msg("zz", 1))
    nodes.handle(topic("n1", "r2"), msg("n1", 1, rack="r2"))
    nodes.handle(topic("n1"), msg("n1", 1, uuid=("U0", "X")))
    nodes.handle(topic("n1"), b"not json")
    nodes.handle(topic("n2"), msg("n2", 5))
    nodes.handle(topic("n2"), msg("n2", 5))  # a replay
    nodes.handle(topic("n2"), msg("n2", 1, boot="b2"))  # a restarted agent starts over
    assert {k: v for k, v in nodes.rejected.items() if v} == {
        "unknown_node": 1,
        "wrong_rack": 1,
        "uuid_mismatch": 1,
        "malformed": 1,
        "stale_sequence": 1,
    }
    assert nodes.accepted == 2
    assert out == []  # n1 never reported validly


def test_reported_limit_ranges_take_precedence_within_bounds(assembler):
    nodes, _ = assembler
    nodes.handle(topic("n1"), msg("n1", 1))
    assert nodes.reported_topology() is None  # the agents agree with the table
    narrow = {"min_cap_w": np.array([250.0, 250.0]), "max_cap_w": np.array([650.0, 650.0])}
    nodes.handle(topic("n1"), msg("n1", 2, **narrow))
    topo = nodes.reported_topology()
    assert topo is not None
    assert topo.gpu_max_cap_w.tolist() == [650.0, 650.0, 700.0, 700.0]
    assert topo.gpu_min_cap_w.tolist() == [250.0, 250.0, 200.0, 200.0]
    nodes.set_policy(topo, nodes.inventory)  # what the daemon's swap does
    assert nodes.reported_topology() is None
    # Implausible ranges are ignored (table figures kept), and judged against the table, not
    # against earlier reports, so they cannot ratchet outwards.
    wide = {"min_cap_w": np.array([10.0, 200.0]), "max_cap_w": np.array([2000.0, 1000.0])}
    nodes.handle(topic("n2"), msg("n2", 1, **wide))
    topo = nodes.reported_topology()
    assert topo is not None
    assert topo.gpu_max_cap_w.tolist()[2:] == [700.0, 1000.0]
    assert topo.gpu_min_cap_w.tolist()[2:] == [200.0, 200.0]
    assert nodes.ranges_ignored == 1
