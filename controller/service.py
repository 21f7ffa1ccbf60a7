"""Wiring for a running controller: metrics server, signals, systemd notification.

`serve` is what `rheostat run` and `rheostat demo` share: SIGTERM/SIGINT stop the daemon cleanly
(retained `offline` status, commands left to expire), SIGHUP reloads the policy file.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog

from controller import package_version
from controller.carbon import CarbonCollector
from controller.daemon import Controller, Notifier
from controller.facility import FacilityCollector
from controller.http import build_app, daemon_registry, start_server
from controller.metrics.edge import EdgeCollector
from controller.metrics.ha import HaCollector
from controller.metrics.jobs import SyncJobsCollector
from controller.metrics.nodes import NodesCollector
from controller.metrics.rheostat import RheostatCollector
from controller.policy_file import Policy

log = structlog.get_logger("rheostat.service")


@asynccontextmanager
async def serving(
    policy: Policy,
    *,
    policy_path: Path | None = None,
    notifier: Notifier | None = None,
    metrics_port: int | None = None,
) -> AsyncIterator[tuple[Controller, int]]:
    """A controller with its HTTP endpoints up; yields it and the bound metrics port."""
    controller = Controller(
        policy, policy_path=policy_path, notifier=notifier, version=package_version()
    )
    registry = daemon_registry()
    # Freshness is kept on the daemon's monotonic clock (a wall-clock step stales nothing).
    registry.register(RheostatCollector(controller.runtime, clock=controller.monotonic))
    registry.register(EdgeCollector(controller.runtime, controller.rejections))
    if controller.facility is not None:
        registry.register(FacilityCollector(controller.facility, clock=controller.clock))
    if controller.carbon is not None:
        registry.register(CarbonCollector(controller.carbon, clock=controller.clock))
    registry.register(SyncJobsCollector(controller.jobs))
    registry.register(HaCollector(controller.ha, lambda: controller.runtime.ingest.cmd_rejected))
    if controller.nodes is not None:
        registry.register(NodesCollector(controller.nodes))
    app = build_app(
        controller.runtime, registry, clock=controller.monotonic, monotonic=controller.monotonic
    )
    cfg = policy.config.metrics
    port = cfg.port if metrics_port is None else metrics_port
    runner, bound = await start_server(app, cfg.host, port)
    log.info("serving metrics", url=f"http://{cfg.host}:{bound}/metrics")
    controller.metrics_serving()
    try:
        yield controller, bound
    finally:
        await runner.cleanup()


async def serve(
    policy: Policy, *, policy_path: Path | None, notifier: Notifier | None = None
) -> None:
    """Run the daemon until SIGTERM or SIGINT; SIGHUP reloads `policy_path`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()
    async with serving(policy, policy_path=policy_path, notifier=notifier) as (controller, _):

        def reload() -> None:
            task = loop.create_task(controller.reload(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
        try:
            await controller.run(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
