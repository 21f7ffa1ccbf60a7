"""Rheostat's daemon: every I/O edge (MQTT, Prometheus, policy files, grid events, the CLI)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed distribution's version (the daemon reports it in `rheostat_build_info`)."""
    try:
        return version("rheostat")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
