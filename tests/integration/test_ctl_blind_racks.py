"""The daemon with every rack's telemetry lost, then a lower contract: the cut reaches every rack.

Real Mosquitto, the daemon in-process, simulated agents. Once every agent has reported, their
telemetry stops (commands still arrive); the contract then steps down, and the daemon must cut
the blind racks at once: the caps in force on the cluster fit the new limit as soon as the
commands land, and the agents never fall back to their safe caps.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from controller.daemon import Controller
from policies.decision import Limits
from simulator.build import build_cluster
from simulator.scenario import Scenario
from tests.integration.harness import agents_running, policy_for, running, wait_until
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SITE = "blind"


async def test_blind_racks_are_cut_at_once_when_the_contract_steps_down(
    mosquitto: Mosquitto,
) -> None:
    scenario = Scenario.model_validate(
        {
            "name": "blind",
            "duration_s": 600,
            "seed": 2,
            "tick_s": 0.1,
            "topology": {"gpus": 128, "a100_share": 0.0, "site_limit_frac": 0.9},
            "physics": {"actuation_lag_s": 0.2, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 128, "iteration_s": 4.0}],
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    text = (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: 128, a100_share: 0}}}}}}\n"
        "control: {tick_period_s: 0.2, command_ttl_s: 3.0, stale_after_s: 1.0}\n"
        f"mqtt: {{port: {mosquitto.port}, client_id: ctl-blind}}\n"
        "metrics: {port: 0}\n"
    )
    controller = Controller(policy_for(cluster, text))
    rt = controller.runtime
    topo = rt.policy.topology
    overhead_w = float(topo.overhead_under(len(topo.levels) - 1)[0])
    async with agents_running(cluster, mosquitto.port, site=SITE) as agents, running(controller):
        await wait_until(lambda: bool(np.all(agents.counters.commands_applied >= 2)))
        agents.period_s = 3600.0  # every rack goes silent after its current period
        await wait_until(lambda: bool(rt.fleet.stale_racks(time.time(), 1.0).all()), 10.0)
        before_w = float(cluster.cap_w.sum()) + overhead_w
        new_limit_w = 0.7 * before_w
        applied = agents.counters.commands_applied.copy()
        rt.limits = Limits(site_limit_w=new_limit_w)
        stepped_at = time.monotonic()
        # Every blind rack hears its cut, and the caps in force fit the new limit.
        await wait_until(
            lambda: float(cluster.cap_w.sum()) + overhead_w <= new_limit_w * (1 + 1e-6), 5.0
        )
        took_s = time.monotonic() - stepped_at
        assert bool(np.all(agents.counters.commands_applied > applied))
        assert rt.decision is not None
        assert float(rt.decision.cap_w.sum()) + overhead_w <= new_limit_w * (1 + 1e-6)
        # A couple of ticks and the actuation lag, not the TTL (3 s) or a stale period.
        assert took_s < 1.5, took_s
        assert agents.counters.fallbacks.sum() == 0
    assert not cluster.trips
