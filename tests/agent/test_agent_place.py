"""One agent file for every server: the node's place comes from the inventory by its name."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_agent_config
from policies.errors import ConfigError

NODES = """nodes:
  - {hostname: a1, rack: r1}
  - {hostname: a2, rack: r1, gpus: 4}
  - {hostname: b1, rack: r2}
"""


def test_rack_and_first_gpu_come_from_the_inventory(tmp_path: Path, monkeypatch):
    (tmp_path / "nodes.yaml").write_text(NODES)
    (tmp_path / "agent.yaml").write_text(f"site: dc\ninventory: {tmp_path / 'nodes.yaml'}\n")
    monkeypatch.setenv("RHEOSTAT_NODE", "a2")
    config = load_agent_config(tmp_path / "agent.yaml")
    assert (config.node, config.rack, config.first_gpu, config.rack_gpus) == ("a2", "r1", 8, 12)
    monkeypatch.setenv("RHEOSTAT_NODE", "zz")
    with pytest.raises(ConfigError, match="'zz' is listed 0 times"):
        load_agent_config(tmp_path / "agent.yaml")
