"""Carbon-aware flexible work in the running daemon, over a real broker, on a simulated fleet.

A scheduler (this test) reports a Flex 3 sweep's remaining work from the simulated job's real
progress; an energy-management system publishes a forecast that is dirty now and clean later.
The controller slows the sweep while the grid is dirty, gives it its power back when it is
clean, leaves the Flex 0 service alone, and the sweep still finishes the work it owed.
"""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.carbon import CarbonCollector
from controller.daemon import Controller
from controller.wire import (
    GpuRange,
    JobReport,
    SignalMessage,
    encode_job,
    encode_signal,
    job_topic,
    signal_topic,
)
from simulator.agents import RackAgents, run_rack_agents
from simulator.build import build_cluster
from simulator.scenario import Scenario
from tests.integration.harness import fleet_policy, running, wait_until
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SITE = "carbontest"
HORIZON_S = 24.0  # the sweep's "day", compressed
OWED_FRAC = 0.85  # of the horizon's full-speed work
DIRTY_S = 8.0  # the forecast is dirty for the first slots, clean after


async def test_sweep_follows_the_signal_and_still_does_its_work(mosquitto: Mosquitto) -> None:
    scenario = Scenario.model_validate(
        {
            "name": "carbon-live",
            "duration_s": 600,
            "tick_s": 0.25,
            "seed": 4,
            "topology": {"gpus": 64, "a100_share": 0.0, "site_limit_frac": 1.0},
            "physics": {"actuation_lag_s": 0.2, "telemetry_delay_s": 0.0},
            "workloads": [
                {"kind": "inference", "name": "serve", "gpus": 32, "tier": 0, "utilization": 0.8},
                {"kind": "training", "name": "sweep", "gpus": 32, "tier": 3, "iteration_s": 0.5},
            ],
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    sections = (
        "capping: {raise_rate_w_per_s: 100000}\n"
        "carbon: {slot_s: 1.0, track_s: 2.0, job_timeout_s: 3.0}\n"
    )
    controller = Controller(
        fleet_policy(
            cluster, site=SITE, port=mosquitto.port, client_id="ctl-carbon", sections=sections
        )
    )
    hook = controller.carbon
    assert hook is not None
    [sweep] = cluster.workloads.training
    k = list(cluster.workloads.training).index(sweep)
    rows = slice(sweep.start_gpu, sweep.start_gpu + sweep.n_gpus)
    serve_rows = slice(0, sweep.start_gpu)
    rack_id = cluster.topology.racks.ids[1]
    assert cluster.topology.rack_slice(1) == rows

    def done_s() -> float:
        return float(cluster.workloads.work[k]) * sweep.iteration_s

    agents = RackAgents(cluster=cluster, site=SITE, period_s=0.2, protocol="5")
    stop_agents = asyncio.Event()
    agents_task = asyncio.create_task(
        run_rack_agents(
            cluster,
            host="127.0.0.1",
            port=mosquitto.port,
            site=SITE,
            stop=stop_agents,
            agents=agents,
        )
    )
    dirty_caps: list[float] = []
    clean_caps: list[float] = []
    try:
        async with (
            aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="scheduler") as sched,
            running(controller),
        ):
            rt = controller.runtime
            await wait_until(lambda: rt.decision is not None)
            t0 = time.time()
            deadline = t0 + HORIZON_S
            values = [900.0] * int(DIRTY_S) + [100.0] * int(HORIZON_S - DIRTY_S + 2)
            forecast = SignalMessage(ts=t0, start_ts=t0, slot_s=1.0, values=tuple(values))
            await sched.publish(signal_topic(SITE), encode_signal(forecast), qos=1)
            owed0 = OWED_FRAC * HORIZON_S
            start_done = done_s()
            while (now := time.time()) < deadline:
                owed = max(owed0 - (done_s() - start_done), 0.0)
                report = JobReport(
                    job="sweep",
                    ts=now,
                    tier=3,
                    deadline_ts=deadline,
                    owed_s=owed,
                    gpus=(GpuRange(rack=rack_id, first=0, count=sweep.n_gpus),),
                )
                await sched.publish(
                    job_topic(SITE, "sweep"), encode_job(report), qos=1, retain=True
                )
                if owed <= 0:
                    break
                cap = float(cluster.cap_w[rows].mean())
                if 3.0 <= now - t0 < DIRTY_S:
                    dirty_caps.append(cap)
                elif now - t0 >= DIRTY_S + 2.0:
                    clean_caps.append(cap)
                # The service is never shaped: no ceiling below its max caps.
                ceiling = hook.ceilings(now)
                max_w = cluster.topology.gpu_max_cap_w
                assert ceiling is None or np.all(ceiling[serve_rows] == max_w[serve_rows])
                await asyncio.sleep(0.25)
            finished = done_s() - start_done
            registry = CollectorRegistry()
            registry.register(CarbonCollector(hook, clock=time.time))
            scraped = generate_latest(registry).decode()
            await sched.publish(job_topic(SITE, "sweep"), b"", qos=1, retain=True)
    finally:
        stop_agents.set()
        async with asyncio.timeout(10):
            await agents_task
    max_cap = float(cluster.topology.gpu_max_cap_w[rows].mean())
    assert dirty_caps, "no sample while the grid was dirty"
    # While dirty, the sweep runs well below its max cap; when clean, it gets power back.
    assert np.median(dirty_caps) < 0.8 * max_cap
    assert clean_caps
    assert np.median(clean_caps) > np.median(dirty_caps) * 1.2
    # The work owed by the deadline is done.
    assert finished >= owed0 * 0.99
    assert 'rheostat_grid_signal{kind="carbon",site="carbontest"}' in scraped
    assert not cluster.trips
