"""Running a daemon and simulated rack agents side by side inside one test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from controller.config import PolicyFile
from controller.daemon import Controller
from controller.policy_file import Policy, parse_policy
from simulator.agents import MqttProtocol, RackAgents, run_rack_agents
from simulator.cluster import SimCluster
from simulator.controllers import controller_topology


def policy_for(cluster: SimCluster, text: str) -> Policy:
    """Policy-file text validated as the daemon would, over the simulated fleet's topology as
    the controller budgets it (ratings on the DC side of the PSUs)."""
    config = PolicyFile.model_validate(parse_policy(text, source="t").config.model_dump())
    topo = controller_topology(cluster.topology, cluster.params.psu_efficiency)
    return Policy(config=config, topology=topo, source="t")


@contextlib.asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[None]:
    """The daemon's loop for the body of the block, stopped (and awaited) on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


@contextlib.asynccontextmanager
async def agents_running(
    cluster: SimCluster,
    port: int,
    *,
    site: str,
    agents: RackAgents | None = None,
    protocol: MqttProtocol = "5",
) -> AsyncIterator[RackAgents]:
    """One MQTT agent per rack of `cluster` (0.2 s telemetry period) and the cluster's clock."""
    agents = agents or RackAgents(cluster=cluster, site=site, period_s=0.2, protocol=protocol)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_rack_agents(cluster, host="127.0.0.1", port=port, site=site, stop=stop, agents=agents)
    )
    try:
        yield agents
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)
