"""The daemon's Prometheus collectors, one module per concern.

- `families`: `Family` specs and `describe_families`, shared by every collector so that what
  `describe()` returns (the registry's collision check) is what `collect()` yields.
- `rheostat`: `RheostatCollector`, built from `fleet` (site, rows, racks, tiers, GPUs) and
  `loop` (ticks, intake, MQTT, reloads, demand response).
- `edge`: `EdgeCollector`, refused messages and what the agents say about our commands.
- `ha`: `HaCollector`, leadership and fencing.
- `nodes`: `NodesCollector`, node agents' per-GPU series with dcgm-exporter's labels.

The facility, carbon and job collectors live beside their hooks and use `families` too.
Collectors are imported from their modules; this package's root imports only `families`, so a
hook can describe its families without importing the runtime.
"""

from controller.metrics.families import PREFIX, Family, describe_families

__all__ = ["PREFIX", "Family", "describe_families"]
