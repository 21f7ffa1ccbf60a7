"""The daemon's Prometheus collectors, one module per concern.

- `rheostat`: `RheostatCollector`, built from `fleet` (site, rows, racks, tiers, GPUs) and
  `loop` (ticks, intake, MQTT, reloads, demand response).
- `edge`: `EdgeCollector`, refused messages and what the agents say about our commands.
- `ha`: `HaCollector`, leadership and fencing.
- `nodes`: `NodesCollector`, node agents' per-GPU series with dcgm-exporter's labels.
- `jobs`: `SyncJobsCollector`, the scheduler's synchronous jobs.

Every collector declares its families once as `controller.metric_families.Family` specs, so
what `describe()` returns (the registry's collision check) is what `collect()` yields. That
module is a leaf outside this package because the facility and carbon collectors, which live
beside their hooks, use it too: the hooks import it without importing these collectors
(and the runtime they read).
"""
