"""/metrics, /livez and /readyz served by the real aiohttp server on a free port."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from controller.daemon import build_runtime
from controller.http import build_app, start_server
from controller.metrics.rheostat import RheostatCollector
from controller.policy_file import parse_policy

POLICY = parse_policy(
    "site: {name: h, topology: {generate: {gpus: 64}}}\ncontrol: {tick_period_s: 1}\n",
    source="h.yaml",
)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_health_endpoints_follow_the_loop_and_the_broker() -> None:
    rt = build_runtime(POLICY, clock=time.time, version="t")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RheostatCollector(rt))
    runner, port = await start_server(build_app(rt, registry), "127.0.0.1", 0)
    try:
        status, body = await asyncio.to_thread(_get, port, "/livez")
        assert (status, body.startswith("starting")) == (200, True)
        rt.ticks.last_tick_monotonic_s = time.monotonic() - 60.0  # ten periods is the limit
        status, body = await asyncio.to_thread(_get, port, "/livez")
        assert status == 503
        assert "last tick" in body
        rt.ticks.last_tick_monotonic_s = time.monotonic()
        assert (await asyncio.to_thread(_get, port, "/livez"))[0] == 200

        status, body = await asyncio.to_thread(_get, port, "/readyz")
        assert status == 503
        assert "not connected" in body
        rt.mqtt_connected = rt.subscribed = True
        status, body = await asyncio.to_thread(_get, port, "/readyz")
        assert (status, "fresh telemetry from 0%" in body) == (503, True)
        rt.fleet.rack_last_seen_s[:] = time.time()
        assert (await asyncio.to_thread(_get, port, "/readyz"))[0] == 200
        rt.reloads.last_successful = False  # a failed reload keeps the old policy: still ready
        assert (await asyncio.to_thread(_get, port, "/readyz"))[0] == 200

        status, body = await asyncio.to_thread(_get, port, "/metrics")
        assert status == 200
        assert 'rheostat_racks{site="h"} 2.0' in body
        assert "rheostat_mqtt_connected 1.0" in body
    finally:
        await runner.cleanup()
