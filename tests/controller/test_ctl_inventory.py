"""The node inventory: its checks against the policy (file:line), model overrides, host lookups."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from controller.inventory import check_inventory, parse_inventory
from controller.policy_file import load_policy, parse_policy
from policies.errors import ConfigError, ConfigErrors
from policies.gpu_models import model_code

POLICY = """limits: {contract_w: 100000}
site:
  name: dc
  topology:
    rows:
      - id: row1
        racks:
          - id: r1
            breaker_w: 30000
            servers: [{model: H100-SXM5, gpus: 8}, {model: H100-SXM5, gpus: 8}]
          - id: r2
            breaker_w: 30000
            servers: [{model: H100-SXM5, gpus: 8}]
"""

GOOD = """nodes:
  - {hostname: gpu-a01, rack: r1, row: row1, uuids: [U0, U1, U2, U3, U4, U5, U6, U7]}
  - {hostname: gpu-a02, rack: r1, model: NVIDIA H200}
  - {hostname: gpu-b01, rack: r2}
"""


def test_good_inventory_places_nodes_and_overrides_models():
    topo = parse_policy(POLICY, source="p.yaml").topology
    inv = parse_inventory(GOOD, source="nodes.yaml")
    assert check_inventory(inv, topo) == []
    assert inv.by_host["gpu-a02"].first == 8
    assert inv.gpu_rows(topo, "gpu-b01", [0, 7]) == [16, 23]
    with pytest.raises(ConfigError, match="not in the inventory"):
        inv.gpu_rows(topo, "gpu-zz", [0])
    with pytest.raises(ConfigError, match="no GPU"):
        inv.gpu_rows(topo, "gpu-b01", [8])


def test_policy_with_nodes_applies_overrides(tmp_path: Path, capsys):
    (tmp_path / "nodes.yaml").write_text(GOOD)
    (tmp_path / "p.yaml").write_text(POLICY + "nodes: nodes.yaml\n")
    assert main(["check", str(tmp_path / "p.yaml")]) == 0
    assert "nodes.yaml: ok: 3 nodes cover every GPU of 2 racks" in capsys.readouterr().out
    policy = load_policy(tmp_path / "p.yaml")
    assert policy.inventory is not None
    models = policy.topology.gpu_model.tolist()
    assert models[8:16] == [model_code("H200-SXM")] * 8
    assert models[:8] == [0] * 8


BAD = """nodes:
  - {hostname: gpu-a01, rack: r1, uuids: [U0, U1, U2, U3, U4, U5, U6, U7]}
  - {hostname: gpu-a01, rack: r1, uuids: [U8, U9, U10, U11, U12, U13, U14, U0]}
  - {hostname: gpu-x01, rack: r9}
  - {hostname: gpu-b01, rack: r2, row: row7, model: NVIDIA Z9}
"""


def test_every_problem_is_reported_with_its_line(tmp_path: Path, capsys):
    (tmp_path / "nodes.yaml").write_text(BAD)
    (tmp_path / "p.yaml").write_text(POLICY + "nodes: nodes.yaml\n")
    with pytest.raises(ConfigErrors) as err:
        load_policy(tmp_path / "p.yaml")
    text = str(err.value)
    nodes = tmp_path / "nodes.yaml"
    assert f"{nodes}:3: hostname: hostname 'gpu-a01' already listed (line 2)" in text
    assert f"{nodes}:3: uuids: duplicate GPU UUID 'U0'" in text
    assert f"{nodes}:4: rack: unknown rack 'r9'" in text
    assert f"{nodes}:5: row: rack 'r2' is in row 'row1', not 'row7'" in text
    assert f"{nodes}:5: model: unknown GPU model 'NVIDIA Z9'" in text
    assert len(err.value.errors) == 5  # r1 and r2 are fully covered: no "nodes missing"
    assert main(["check", str(tmp_path / "p.yaml")]) == 1
    assert "5 error(s)" in capsys.readouterr().err


def test_missing_nodes_and_shape_errors():
    topo = parse_policy(POLICY, source="p.yaml").topology
    inv = parse_inventory("nodes:\n  - {hostname: gpu-a01, rack: r1}\n", source="n.yaml")
    problems = [str(e) for e in check_inventory(inv, topo)]
    assert "n.yaml:2: rack 'r1': nodes cover 8 of its 16 GPUs (nodes missing)" in problems
    assert "n.yaml: rack 'r2': nodes cover 0 of its 8 GPUs (nodes missing)" in problems
    with pytest.raises(ConfigErrors) as err:
        parse_inventory("nodes:\n  - {hostname: 'a b', rack: r1, gpus: 0}\n", source="n.yaml")
    assert {e.line for e in err.value.errors} == {2}
