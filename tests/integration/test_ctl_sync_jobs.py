"""The scheduler's synchronous jobs in the running daemon, over a real broker, on a simulated fleet.

A 32-GPU training job straddles two racks: on rack 0 it shares the breaker with Flex 0 serving,
which comes first, on rack 1 with a sweep of its own tier. Unreported, the job's GPUs on rack 1
get more power than those on rack 0, and the job steps at the slower. Once the scheduler reports
the job as synchronous, the daemon holds every member to the slowest one's pace and the sweep
beside them gets what they gave back.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.daemon import Controller
from controller.metrics.jobs import SyncJobsCollector
from controller.wire import GpuRange, JobReport, encode_job, job_topic
from simulator.build import build_cluster
from simulator.scenario import Scenario
from tests.integration.harness import agents_running, fleet_policy, running, wait_until
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SITE = "synctest"


async def caps_over(cluster_caps: np.ndarray, seconds: float) -> np.ndarray:
    """The mean of the caps in force over `seconds`, sampled every 0.2 s."""
    samples = []
    for _ in range(round(seconds / 0.2)):
        samples.append(cluster_caps.copy())
        await asyncio.sleep(0.2)
    return np.mean(samples, axis=0)


async def test_a_reported_synchronous_job_is_paced_and_the_sweep_gets_the_rest(
    mosquitto: Mosquitto,
) -> None:
    scenario = Scenario.model_validate(
        {
            "name": "sync-live",
            "duration_s": 600,
            "tick_s": 0.25,
            "seed": 5,
            "topology": {
                "gpus": 64,
                "a100_share": 0.0,
                "site_limit_frac": 1.0,
                "rack_rating_frac": 0.9,
                "rack_derating": 1.0,
            },
            "physics": {"actuation_lag_s": 0.2, "telemetry_delay_s": 0.0},
            "workloads": [
                # Prefill only: compute-bound serving that draws near its max cap.
                {
                    "kind": "inference",
                    "name": "serve",
                    "gpus": 16,
                    "tier": 0,
                    "utilization": 1.0,
                    "bursts_per_hour": 0,
                    "prefill_time_share": 1.0,
                },
                {"kind": "training", "name": "pretrain", "gpus": 32, "tier": 1, "comm_frac": 0.0},
                {"kind": "training", "name": "sweep", "gpus": 16, "tier": 1, "comm_frac": 0.0},
            ],
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    controller = Controller(
        fleet_policy(
            cluster,
            site=SITE,
            port=mosquitto.port,
            client_id="ctl-sync",
            sections=(
                "capping: {raise_rate_w_per_s: 100000}\n"
                "tiers: {default: 1, classes: {inference: 0, training: 1, idle: 3}}\n"
            ),
        )
    )
    on_rack0, on_rack1, sweep = slice(16, 32), slice(32, 48), slice(48, 64)
    racks = cluster.topology.racks.ids
    report = JobReport(
        job="pretrain",
        ts=1.0,
        tier=1,
        gpus=(
            GpuRange(rack=racks[0], first=16, count=16),
            GpuRange(rack=racks[1], first=0, count=16),
        ),
        flexible=False,
        sync=True,
    )
    async with (
        agents_running(cluster, mosquitto.port, site=SITE),
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="scheduler") as sched,
        running(controller),
    ):
        rt = controller.runtime
        await wait_until(lambda: rt.decision is not None)
        await asyncio.sleep(3.0)
        before = await caps_over(cluster.cap_w, 2.0)
        await sched.publish(job_topic(SITE, "pretrain"), encode_job(report), qos=1, retain=True)
        await wait_until(lambda: controller.jobs.sync_job() is not None, timeout_s=5.0)
        await asyncio.sleep(3.0)
        after = await caps_over(cluster.cap_w, 2.0)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SyncJobsCollector(controller.jobs))
        scraped = generate_latest(registry).decode()
        await sched.publish(job_topic(SITE, "pretrain"), b"", qos=1, retain=True)
    # Unreported: rack 1's members draw more than rack 0's, which set the job's pace.
    assert before[on_rack1].mean() > before[on_rack0].mean() + 30.0
    # Reported: every member at rack 0's pace (within the deadband), the sweep well above it.
    assert abs(after[on_rack1].mean() - after[on_rack0].mean()) <= 10.0
    assert after[on_rack0].mean() >= before[on_rack0].mean() - 10.0
    gained = after[sweep].sum() - before[sweep].sum()
    assert gained > 0.5 * (before[on_rack1].sum() - after[on_rack1].sum())
    assert f'rheostat_sync_jobs{{site="{SITE}"}} 1.0' in scraped
    assert not cluster.trips
