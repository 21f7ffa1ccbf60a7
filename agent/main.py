"""Entry points behind `rheostat agent`: one reading (`--once`), or the agent until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import Any

import numpy as np
import orjson

from agent.backend import GpuBackend
from agent.config import AgentConfig
from agent.node import ClassSource, NodeAgent
from agent.node_power import NodePowerReader, node_power_reader
from agent.run import run_agent


def _list(arr: Any) -> list[float | None]:
    return [None if not np.isfinite(x) else round(float(x), 3) for x in np.asarray(arr).tolist()]


def once_report(backend: GpuBackend, node_power: NodePowerReader | None = None) -> dict[str, Any]:
    """One reading of every field with what it took: what `--once --json` prints.

    `read_s` times a whole read of every GPU; backends that count their library calls (NVML)
    add `calls` and `s_per_call` for that read alone.
    """
    ident = backend.identity()
    calls0, secs0 = getattr(backend, "calls", None), getattr(backend, "call_seconds", None)
    started = time.perf_counter()
    reading = backend.read()
    read_s = time.perf_counter() - started
    report: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "backend": backend.name,
        "n_gpus": ident.n_gpus,
        "read_s": round(read_s, 6),
        "gpus": [
            {
                "index": ident.index[i],
                "uuid": ident.uuid[i],
                "pci_bus_id": ident.pci_bus_id[i],
                "name": ident.name[i],
                "min_cap_w": float(ident.min_cap_w[i]),
                "max_cap_w": float(ident.max_cap_w[i]),
                "default_cap_w": float(ident.default_cap_w[i]),
                "min_sm_clock_mhz": float(ident.min_sm_clock_mhz[i]),
                "max_sm_clock_mhz": float(ident.max_sm_clock_mhz[i]),
            }
            for i in range(ident.n_gpus)
        ],
        "reading": {key: _list(getattr(reading, key)) for key in type(reading).__slots__},
    }
    calls1, secs1 = getattr(backend, "calls", None), getattr(backend, "call_seconds", None)
    if isinstance(calls0, int) and isinstance(calls1, int) and calls1 > calls0:
        assert isinstance(secs0, float)
        assert isinstance(secs1, float)
        report["calls"] = calls1 - calls0
        report["s_per_call"] = round((secs1 - secs0) / (calls1 - calls0), 6)
    if node_power is not None:
        report["node_power_w"] = node_power.read()
    return report


def print_once(backend: GpuBackend, config: AgentConfig, *, as_json: bool) -> None:
    try:
        report = once_report(backend, node_power_reader(config.node_power))
    finally:
        backend.close()
    if as_json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    for gpu, power, cap in zip(
        report["gpus"], report["reading"]["power_w"], report["reading"]["cap_w"], strict=True
    ):
        print(f"{gpu['index']} {gpu['uuid']} {gpu['name']}: {power} W, limit {cap} W")


async def serve_agent(
    config: AgentConfig, backend: GpuBackend, classes: ClassSource | None = None
) -> None:
    """Run the agent until SIGTERM or SIGINT, then restore the defaults it found."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = NodeAgent(
        config=config,
        backend=backend,
        node_power=node_power_reader(config.node_power),
        classes=classes,
    )
    await run_agent(agent, stop)
