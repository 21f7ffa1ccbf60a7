"""One small HTTP server for `/metrics`, `/livez` and `/readyz` (aiohttp, on the daemon's loop).

`/livez` fails when the control loop has stopped ticking (a supervisor should restart the
process); `/readyz` fails until the controller is connected, subscribed, holds a valid policy and
sees fresh telemetry from the configured share of racks (a load balancer or standby should not
count on it yet). The metrics exposition is generated from a registry passed in, never a global.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from controller.runtime import Runtime


def liveness(runtime: Runtime, now_monotonic_s: float) -> tuple[bool, str]:
    control = runtime.policy.config.control
    last = runtime.ticks.last_tick_monotonic_s
    max_age_s = control.livez_max_age_ticks * control.tick_period_s
    if math.isnan(last):
        return True, "starting: no tick yet"
    age_s = now_monotonic_s - last
    if age_s > max_age_s:
        return False, f"last tick {age_s:.1f} s ago (limit {max_age_s:.1f} s)"
    return True, f"last tick {age_s:.3f} s ago"


def readiness(runtime: Runtime, now_s: float) -> tuple[bool, str]:
    problems = []
    if not runtime.mqtt_connected or not runtime.subscribed:
        problems.append("not connected to the broker")
    if not runtime.reloads.last_successful:
        problems.append("the last policy reload failed (the previous policy is in force)")
    share = runtime.fresh_share(now_s)
    need = runtime.policy.config.control.ready_fresh_frac
    if share < need:
        problems.append(f"fresh telemetry from {share:.0%} of racks, need {need:.0%}")
    if problems and problems[0].startswith("the last policy"):
        # A failed reload keeps a valid policy running: report it, but stay ready.
        problems = problems[1:]
    return (not problems), ("; ".join(problems) or f"ready: {share:.0%} of racks fresh")


def build_app(
    runtime: Runtime,
    registry: CollectorRegistry,
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(_: web.Request) -> web.Response:
        ok, text = liveness(runtime, monotonic())
        return web.Response(text=text + "\n", status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok, text = readiness(runtime, clock())
        return web.Response(text=text + "\n", status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    return app


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns the runner (to clean up) and the bound port (0 picks a free one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses  # what the listening sockets are bound to
    bound = int(addresses[0][1]) if addresses else port
    return runner, bound
