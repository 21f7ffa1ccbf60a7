"""Rheostat's daemon: every I/O edge (MQTT, Prometheus, policy files, grid events, the CLI)."""
