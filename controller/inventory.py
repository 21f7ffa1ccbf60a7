"""The node inventory: which server (by hostname) sits in which rack, where its GPUs fall in the
rack's arrays, and optionally its GPU model and UUIDs.

```yaml
nodes:                       # in GPU order within each rack
  - hostname: gpu-a01        # the node id its agent publishes under (short hostname)
    rack: r00000
    row: row000              # optional: checked against the policy's topology
    gpus: 8                  # default 8
    model: NVIDIA H100 80GB HBM3   # optional: overrides the policy's model for these GPUs
    uuids: [GPU-..., ...]    # optional: the GPUs' UUIDs, checked against what the agent reports
```

`check_inventory` reports every problem with file:line: a rack or row the topology lacks, a
hostname listed twice, a UUID listed twice, racks whose nodes do not cover exactly their GPUs
(nodes missing or extra), an unknown model. Slurm's prolog and the controller's node adapter both
resolve hostnames through it, so a host not listed is refused everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from controller.wire import MAX_NODE_GPUS, is_id
from policies.errors import ConfigError, ConfigErrors, yaml_line
from policies.gpu_models import match_model
from policies.topology import Topology

MAX_NODES = 100_000


class _NodeSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hostname: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
    rack: Annotated[str, Field(min_length=1, max_length=64)]
    row: str | None = None
    gpus: Annotated[int, Field(gt=0, le=MAX_NODE_GPUS)] = 8
    model: str | None = None
    uuids: tuple[Annotated[str, Field(min_length=1, max_length=96)], ...] | None = None


class _InventoryFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: Annotated[list[_NodeSpec], Field(min_length=1, max_length=MAX_NODES)]


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryNode:
    """One server: its rack and its GPUs' rows `first .. first + gpus - 1` within the rack."""

    hostname: str
    rack: str
    row: str | None
    first: int
    gpus: int
    model: str | None
    uuids: tuple[str, ...] | None
    line: int | None


@dataclass(frozen=True, kw_only=True)
class Inventory:
    nodes: tuple[InventoryNode, ...]
    source: str
    by_host: dict[str, InventoryNode] = field(default_factory=dict)
    by_rack: dict[str, tuple[InventoryNode, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, nodes: list[InventoryNode], source: str) -> Inventory:
        by_rack: dict[str, list[InventoryNode]] = {}
        placed = []
        for node in nodes:
            siblings = by_rack.setdefault(node.rack, [])
            first = sum(n.gpus for n in siblings)
            placed_node = replace(node, first=first)
            siblings.append(placed_node)
            placed.append(placed_node)
        return cls(
            nodes=tuple(placed),
            source=source,
            by_host={n.hostname: n for n in placed},
            by_rack={rack: tuple(ns) for rack, ns in by_rack.items()},
        )

    def gpu_rows(self, topology: Topology, hostname: str, indexes: list[int]) -> list[int]:
        """Fleet rows of a host's GPUs by on-host index; `ConfigError` for an unknown host."""
        node = self.by_host.get(hostname)
        rack = None if node is None else topology.rack_index.get(node.rack)
        if node is None or rack is None:
            raise ConfigError(f"host {hostname!r} is not in the inventory", file=self.source)
        bad = [i for i in indexes if not 0 <= i < node.gpus]
        if bad:
            raise ConfigError(f"host {hostname!r} has no GPU {bad}", file=self.source)
        base = int(topology.rack_offsets[rack]) + node.first
        return [base + i for i in indexes]


def parse_inventory(text: str, *, source: str) -> Inventory:
    """Validate the file's own shape (not yet against a topology); errors carry file:line."""
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise ConfigError(f"not valid YAML: {exc.problem}", file=source, line=line) from None
    if not isinstance(data, dict):
        raise ConfigError("must be a YAML mapping with a nodes list", file=source)
    try:
        parsed = _InventoryFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors.from_validation(exc.errors(), doc=data, source=source) from None
    nodes = [
        InventoryNode(
            hostname=spec.hostname,
            rack=spec.rack,
            row=spec.row,
            first=0,
            gpus=spec.gpus,
            model=spec.model,
            uuids=spec.uuids,
            line=yaml_line(data, ("nodes", i)),
        )
        for i, spec in enumerate(parsed.nodes)
    ]
    return Inventory.build(nodes, source)


def load_inventory(path: Path) -> Inventory:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    return parse_inventory(text, source=str(path))


def check_inventory(inventory: Inventory, topology: Topology) -> list[ConfigError]:
    """Every disagreement between the inventory and the policy's topology, with file:line."""
    errors: list[ConfigError] = []
    src = inventory.source

    def err(message: str, node: InventoryNode | None, key: str | None = None) -> None:
        errors.append(
            ConfigError(message, file=src, line=None if node is None else node.line, field=key)
        )

    hosts: dict[str, InventoryNode] = {}
    uuids: dict[str, InventoryNode] = {}
    rows = topology.levels[topology.rack_level + 1]
    rack_row = topology.levels[topology.rack_level].parent
    for node in inventory.nodes:
        if node.hostname in hosts:
            err(
                f"hostname {node.hostname!r} already listed (line {hosts[node.hostname].line})",
                node,
                "hostname",
            )
        hosts.setdefault(node.hostname, node)
        if not is_id(node.rack):
            err("rack must be 1-64 chars of [A-Za-z0-9._:-]", node, "rack")
        rack = topology.rack_index.get(node.rack)
        if rack is None:
            err(f"unknown rack {node.rack!r} (not in the policy's topology)", node, "rack")
        elif node.row is not None and rows.ids[int(rack_row[rack])] != node.row:
            err(
                f"rack {node.rack!r} is in row {rows.ids[int(rack_row[rack])]!r}, not {node.row!r}",
                node,
                "row",
            )
        if node.model is not None and match_model(node.model) is None:
            err(f"unknown GPU model {node.model!r}", node, "model")
        if node.uuids is not None:
            if len(node.uuids) != node.gpus:
                err(f"{len(node.uuids)} uuids for {node.gpus} GPUs", node, "uuids")
            for uuid in node.uuids:
                if uuid in uuids:
                    err(
                        f"duplicate GPU UUID {uuid!r} (also on {uuids[uuid].hostname!r})",
                        node,
                        "uuids",
                    )
                uuids.setdefault(uuid, node)
    sizes = topology.rack_sizes()
    for rack_id, rack in topology.rack_index.items():
        nodes = inventory.by_rack.get(rack_id, ())
        covered = sum(n.gpus for n in nodes)
        if covered != int(sizes[rack]):
            last = nodes[-1] if nodes else None
            what = "nodes missing" if covered < sizes[rack] else "more GPUs than the rack has"
            err(
                f"rack {rack_id!r}: nodes cover {covered} of its {int(sizes[rack])} GPUs ({what})",
                last,
            )
    return errors


def apply_model_overrides(topology: Topology, inventory: Inventory) -> Topology:
    """The topology with each node's `model` (where given) in place of the policy's."""
    models = topology.gpu_model.copy()
    changed = False
    for node in inventory.nodes:
        rack = topology.rack_index.get(node.rack)
        code = None if node.model is None else match_model(node.model)
        if rack is None or code is None:
            continue
        lo = int(topology.rack_offsets[rack]) + node.first
        models[lo : lo + node.gpus] = code
        changed = True
    if not changed or np.array_equal(models, topology.gpu_model):
        return topology
    return Topology.create(
        site=topology.site,
        gpu_model=models,
        gpu_server=topology.gpu_server,
        levels=topology.levels,
        rack_level=topology.rack_level,
    )
