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


def fleet_policy(
    cluster: SimCluster, *, site: str, port: int, client_id: str, sections: str
) -> Policy:
    """The daemon's policy for an all-H100 simulated fleet on a 0.2 s tick, plus `sections`
    (more policy-file YAML lines); limits carry the fleet's PSU efficiency."""
    assert not cluster.topology.gpu_model.any(), "generate with a100_share 0 must match the fleet"
    text = (
        f"site: {{name: {site}, topology: {{generate: {{gpus: {cluster.topology.n_gpus},"
        " a100_share: 0}}}\n"
        "control: {tick_period_s: 0.2, command_ttl_s: 3.0, stale_after_s: 2}\n"
        f"mqtt: {{port: {port}, client_id: {client_id}}}\n"
        "metrics: {port: 0}\n"
        f"limits: {{psu_efficiency: {cluster.params.psu_efficiency}}}\n"
    )
    return policy_for(cluster, text + sections)


def policy_for(cluster: SimCluster, text: str) -> Policy:
    """Policy-file text validated as the daemon would, over the simulated fleet's topology as
    the controller budgets it (ratings on the DC side of the PSUs)."""
    config = PolicyFile.model_validate(parse_policy(text, source="t").config.model_dump())
    topo = controller_topology(cluster.topology, cluster.params.psu_efficiency)
    return Policy(config=config, topology=topo, source="t")


@contextlib.asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[None]:
    """The daemon (`async with controller`) for the body of the block, stopped in 10 s."""
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(controller)
        try:
            yield
        finally:
            async with asyncio.timeout(10):
                await stack.aclose()


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
