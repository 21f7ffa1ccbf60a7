"""`capping.lend.lender_classes` in the daemon: the workload classes the agents report, turned
into the decision's lender mask, so that only GPUs no job holds lend their headroom."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller.daemon import Controller
from policies.pipeline import decide
from simulator.build import build_cluster
from simulator.scenario import Scenario
from tests.integration.harness import agents_running, fleet_policy, running, wait_until
from tests.services import Mosquitto

SITE = "lenders"


async def test_only_gpus_no_job_holds_lend_when_the_policy_names_the_idle_class(
    mosquitto: Mosquitto,
) -> None:
    scenario = Scenario.model_validate(
        {
            "name": SITE,
            "duration_s": 600,
            "topology": {"gpus": 64, "a100_share": 0.0},
            "workloads": [
                {"kind": "training", "name": "t", "gpus": 32, "iteration_s": 4.0},
                {"kind": "inference", "name": "chat", "gpus": 16, "tier": 0},
            ],
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    wl = cluster.workloads
    idle = wl.gpu_job == wl.n_jobs - 1
    assert 0 < idle.sum() < idle.size
    lend = "capping: {lend: {enabled: true, lender_classes: [idle]}}\n"
    policy = fleet_policy(cluster, site=SITE, port=mosquitto.port, client_id="ctl", sections=lend)
    seen: list[NDArray[np.bool_] | None] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("lender"))
        return decide(*args, **kwargs)

    controller = Controller(policy, decider=recording)
    async with (
        agents_running(cluster, mosquitto.port, site=SITE),
        running(controller),
    ):
        # Every rack has reported its GPUs' classes (the unknown class is code 0).
        await wait_until(lambda: bool(np.all(controller.runtime.fleet.workload_class > 0)), 20.0)
        count = len(seen)
        await wait_until(lambda: len(seen) > count, 5.0)
    lender = seen[-1]
    assert lender is not None
    np.testing.assert_array_equal(lender, idle)
