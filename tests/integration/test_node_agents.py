"""The daemon with node agents (sim backend) through a real Mosquitto: racks assembled from their
nodes, commands obeyed, and the agents' watchdog applying safe caps once the controller is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.config import AgentConfig
from agent.node import NodeAgent
from agent.run import run_agent
from controller.daemon import Controller
from controller.inventory import parse_inventory
from controller.metrics.nodes import NodesCollector
from controller.policy_file import Policy
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.gpu_backend import SimGpuBackend
from simulator.scenario import Scenario
from tests.integration.harness import policy_for, running, wait_until
from tests.services import Mosquitto, require_binary

pytestmark = pytest.mark.integration

SITE = "nodedc"
TTL_S = 2.0


def cluster_of_nodes() -> SimCluster:
    """Two racks of two 8-GPU servers, under a site limit that binds."""
    scenario = Scenario.model_validate(
        {
            "name": "nodes",
            "duration_s": 600,
            "seed": 9,
            "topology": {
                "gpus": 32,
                "a100_share": 0.0,
                "servers_per_rack": 2,
                "site_limit_frac": 0.6,
            },
            "physics": {"actuation_lag_s": 0.2, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 32, "iteration_s": 4.0}],
        }
    )
    return build_cluster(scenario, site=SITE)


def policy(cluster: SimCluster, port: int) -> Policy:
    text = (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: 32, a100_share: 0,"
        " servers_per_rack: 2}}}\n"
        f"control: {{tick_period_s: 0.2, command_ttl_s: {TTL_S}, stale_after_s: 2}}\n"
        f"mqtt: {{port: {port}, client_id: ctl-nodes}}\n"
        "metrics: {port: 0}\n"
        f"limits: {{psu_efficiency: {cluster.params.psu_efficiency}}}\n"
    )
    base = policy_for(cluster, text)
    servers = cluster.topology.levels[0]
    lines = [
        f"  - {{hostname: {sid}, rack: {cluster.topology.racks.ids[int(servers.parent[i])]}}}"
        for i, sid in enumerate(servers.ids)
    ]
    inventory = parse_inventory("nodes:\n" + "\n".join(lines) + "\n", source="nodes.yaml")
    return Policy(config=base.config, topology=base.topology, source="t", inventory=inventory)


def node_agents(cluster: SimCluster, port: int) -> list[NodeAgent]:
    topo = cluster.topology
    agents = []
    for server, host in enumerate(topo.levels[0].ids):
        rack = int(topo.levels[0].parent[server])
        backend = SimGpuBackend(cluster, server=server, step_cluster=server == 0)
        config = AgentConfig(
            site=SITE,
            rack=topo.racks.ids[rack],
            node=host,
            first_gpu=backend.rows.start - int(topo.rack_offsets[rack]),
            rack_gpus=int(topo.rack_sizes()[rack]),
            backend="sim",
            period_s=0.2,
            safe_cap_w=210.0,
            mqtt={"host": "127.0.0.1", "port": port, "max_backoff_s": 0.5},  # type: ignore[arg-type]
        )
        agents.append(NodeAgent(config=config, backend=backend, classes=backend.workload_classes))
    return agents


async def test_controller_and_node_agents_close_the_loop_then_fail_safe(mosquitto: Mosquitto):
    cluster = cluster_of_nodes()
    controller = Controller(policy(cluster, mosquitto.port))
    rt = controller.runtime
    nodes = controller.nodes
    assert nodes is not None
    agents = node_agents(cluster, mosquitto.port)
    # Server 1's board allows 600 W at most, whatever the datasheet says: its agent reports it.
    narrow = agents[1].ident
    agents[1].ident = dataclasses.replace(narrow, max_cap_w=np.full(8, 600.0))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_agent(a, stop)) for a in agents]
    try:
        async with running(controller):
            await wait_until(lambda: nodes.assembled >= 4 and rt.ingest.counters.accepted >= 4)
            await wait_until(lambda: not rt.fleet.stale_racks(controller.monotonic(), 2.0).any())
            assert sum(rt.ingest.counters.rejected.values()) == 0
            assert sum(nodes.rejected.values()) == 0
            # Rack power: GPU power plus the servers' non-GPU draw (no node meters here).
            assert rt.fleet.rack_power_w.min() > 2 * 2800.0
            # The controller's caps reach the GPUs through the node agents.
            await wait_until(lambda: all(a.gate.accepted >= 1 for a in agents))
            await wait_until(
                lambda: (
                    bool(np.allclose(cluster.cap_w, rt.book.sent_cap_w, atol=0.06))
                    and bool(np.any(rt.book.sent_cap_w < cluster.topology.gpu_max_cap_w))
                )
            )
            # The reported range took precedence over the table: the controller budgets server 1
            # with 600 W GPUs and never commands them above it.
            await wait_until(lambda: rt.policy.topology.gpu_max_cap_w[8:16].max() == 600.0)
            assert rt.policy.topology.gpu_max_cap_w[:8].min() == 700.0
            await wait_until(lambda: bool(rt.book.sent_cap_w[8:16].max() <= 600.0))
            registry = CollectorRegistry(auto_describe=False)
            registry.register(NodesCollector(nodes))
            text = generate_latest(registry).decode()
            assert 'Hostname="s000003"' in text
            assert 'UUID="GPU-sim-nodedc-s000000-07",gpu="7"' in text
            assert "rheostat_gpu_commanded_cap_watts{" in text
            # Every series the alerts read is exported, and promtool accepts the exposition.
            assert "rheostat_gpu_cap_mismatch{" in text
            assert "rheostat_node_fallback{" in text
            lint = await asyncio.to_thread(
                subprocess.run,
                [require_binary("promtool"), "check", "metrics"],
                input=text,
                capture_output=True,
                text=True,
                check=False,
            )
            assert lint.returncode == 0, lint.stdout + lint.stderr
        # The controller is gone: each agent holds its caps until the TTL, then its safe caps.
        stopped = time.monotonic()
        assert not any(a.gate.fallback for a in agents)
        await wait_until(lambda: all(a.gate.fallback for a in agents), TTL_S + 2.0)
        assert time.monotonic() - stopped <= TTL_S + 0.5
        # The commands carried the policy's safe caps (`safe_cap_w`): those, not the agents'
        # configured 210 W, within each GPU's range and the wire's 0.1 W rounding down.
        safe = np.floor(rt.policy.safe_cap_w * 10.0) / 10.0
        assert not np.allclose(safe, 210.0)
        expected = np.clip(safe, cluster.topology.gpu_min_cap_w, cluster.topology.gpu_max_cap_w)
        expected[8:16] = np.minimum(expected[8:16], 600.0)  # server 1's reported range
        await wait_until(lambda: bool(np.allclose(cluster.cap_w, expected, atol=1e-6)), 3.0)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)
    # A clean stop gives the GPUs back the limits they had before the agents started.
    assert all(
        np.array_equal(a.backend.applied[-1][0], a.ident.default_cap_w)  # type: ignore[attr-defined]
        for a in agents
    )
