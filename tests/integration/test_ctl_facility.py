"""The facility meter in the running daemon: the contract applies at the meter, not at IT power.

A simulated fleet runs under a contract its IT draw alone would fit; the meter reports cooling and
losses on top, so the controller must turn the contract into a lower IT budget and hold the fleet
under it. When the meter falls silent, the budget comes from the cooling model with a wider margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.config import PolicyFile
from controller.daemon import Controller
from controller.facility import FacilityCollector, MeterReading, encode_meter, facility_topic
from controller.policy_file import Policy, parse_policy
from simulator.agents import RackAgents, run_rack_agents
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.controllers import controller_topology
from simulator.scenario import Scenario
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SITE = "factest"
CONTRACT_W = 60_000.0


def cluster_and_policy(port: int) -> tuple[SimCluster, Policy]:
    scenario = Scenario.model_validate(
        {
            "name": "facility",
            "duration_s": 600,
            "seed": 5,
            "topology": {"gpus": 64, "a100_share": 0.0},
            "physics": {"actuation_lag_s": 0.2, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 64, "iteration_s": 4.0}],
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    text = (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: 64, a100_share: 0}}}}}}\n"
        "control: {tick_period_s: 0.2, command_ttl_s: 3.0, stale_after_s: 2}\n"
        f"mqtt: {{port: {port}, client_id: ctl-fac}}\n"
        "metrics: {port: 0}\n"
        f"facility: {{contract_w: {CONTRACT_W}, cooling: air, meter_timeout_s: 1.0}}\n"
    )
    config = PolicyFile.model_validate(parse_policy(text, source="t").config.model_dump())
    topo = controller_topology(cluster.topology, cluster.params.psu_efficiency)
    return cluster, Policy(config=config, topology=topo, source="t")


@contextlib.asynccontextmanager
async def running(controller: Controller) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


@contextlib.asynccontextmanager
async def agents_running(cluster: SimCluster, port: int) -> AsyncIterator[None]:
    agents = RackAgents(cluster=cluster, site=SITE, period_s=0.2, protocol="5")
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_rack_agents(cluster, host="127.0.0.1", port=port, site=SITE, stop=stop, agents=agents)
    )
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_facility_contract_becomes_an_it_budget(mosquitto: Mosquitto) -> None:
    cluster, policy = cluster_and_policy(mosquitto.port)
    controller = Controller(policy)
    rt = controller.runtime
    hook = controller.facility
    assert hook is not None

    def it_w() -> float:
        return float(rt.fleet.rack_power_w.sum())

    async with (
        agents_running(cluster, mosquitto.port),
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="meter") as meter,
        running(controller),
    ):
        await wait_until(
            lambda: rt.decision is not None and not rt.fleet.stale_racks(time.time(), 2).any()
        )
        # The meter says cooling and losses add 40 % to IT power: PUE 1.4.
        for _ in range(15):
            reading = MeterReading(ts=time.time(), facility_w=it_w() * 1.4, outdoor_c=38.0)
            await meter.publish(facility_topic(SITE), encode_meter(reading), qos=0)
            await asyncio.sleep(0.2)
        budget = hook.budget
        assert budget is not None
        assert budget.budget_w < CONTRACT_W / 1.3  # the IT share of the contract, with a margin
        assert rt.decision is not None
        assert rt.decision.site_allowed_w <= budget.budget_w + 1.0
        # Racks report wall power; the simulated fleet's limits are DC-side (its PSU losses).
        eff = cluster.params.psu_efficiency
        await wait_until(lambda: it_w() * eff <= budget.budget_w * 1.02)
        fresh_margin = budget.margin_frac

        registry = CollectorRegistry()
        registry.register(FacilityCollector(hook, clock=time.time))
        scraped = generate_latest(registry).decode()
        assert f'rheostat_pue{{site="{SITE}"}}' in scraped
        assert "rheostat_it_budget_watts" in scraped

        # The meter goes silent: the cooling model takes over with a wider margin.
        await asyncio.sleep(1.6)
        await wait_until(lambda: hook.budget is not None and hook.budget.margin_frac > fresh_margin)
        assert hook.budget is not None
        assert hook.budget.budget_w < CONTRACT_W
