"""Pacing synchronous jobs in the closed loop: the work it frees goes to the tiers below."""

from __future__ import annotations

import numpy as np

from policies.decision import CappingSettings, PolicySettings
from simulator import loop
from simulator.cluster import SimCluster
from simulator.controllers import Controller, RheostatController, controller_topology
from simulator.scenario import load_scenario

#: Plain strict tiers (no tolerance floors): with the default floors the sweeps' own rack breakers
#: already hold them, paced or not, and what pacing frees has nowhere to show.
STRICT = PolicySettings(capping=CappingSettings(flex_tolerances=(0.0, 0.0, 0.0, 0.0)))


def unpaced(cluster: SimCluster) -> Controller:
    """Rheostat without the scheduler's job list: every GPU allocated on its own."""
    topo = controller_topology(cluster.topology, cluster.params.psu_efficiency)
    return RheostatController(topo, cluster.workloads.gpu_tier(), STRICT)


def test_pacing_the_training_job_lets_the_sweeps_beside_it_run_faster() -> None:
    # `oversubscribed`: the Flex 1 job's racks give its GPUs unequal power, and the job steps at
    # its slowest GPU.
    scenario = load_scenario("oversubscribed").shortened(420.0)
    plain = loop.run(scenario, controller=unpaced)
    paced = loop.run(scenario, settings=STRICT)
    for run in (plain, paced):
        assert not run.cluster.trips
        assert all(s == 0.0 for s in run.compliance.seconds_over.values())
    names = paced.job_names

    def work(run: loop.RunResult, name: str) -> float:
        return float(run.job_work[names.index(name)])

    # The job loses nothing; it gains, since a rack's fill shares power in proportion to each
    # GPU's cap range, which leaves its H100s and A100s at different clocks, and what the faster
    # model gives back lifts the slower. The Flex 3 sweeps gain what the job's racks gave back
    # (measured: +2.8 %, up to their own racks' breakers; +5.4 % when a capped GPU's demand was
    # its cap plus headroom alone, before its SM activity counted, which left the unpaced sweeps
    # further below those breakers).
    assert work(paced, "llm-pretrain") >= work(plain, "llm-pretrain")
    assert work(paced, "research") > work(plain, "research") * 1.02
    tier0 = paced.job_tier[: len(names)] == 0
    np.testing.assert_allclose(paced.job_work[tier0], plain.job_work[tier0], rtol=0.005)
