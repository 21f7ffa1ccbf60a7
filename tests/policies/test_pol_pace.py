"""Synchronous jobs: members paced to their slowest GPU, the power they give back reused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from policies.decision import Decision, DecisionState, Limits, PolicySettings
from policies.errors import PolicyError
from policies.fleet import FleetState
from policies.gpu_models import model_table
from policies.pipeline import decide
from policies.topology import Topology, generate_topology
from tests.policies.pol_instances import Instance, busy_fleet, instances
from tests.policies.test_pol_pipeline import check_limits

SETTINGS = PolicySettings()
IDLE_W = model_table("idle_w")
MAX_W = model_table("max_cap_w")


def pace(topo: Topology, cap_w: NDArray[np.float64], activity: float) -> NDArray[np.float64]:
    """The policy's clock argument b per GPU: equal b is equal clock, whatever the model."""
    model = topo.gpu_model
    b = (cap_w - IDLE_W[model]) / ((MAX_W[model] - IDLE_W[model]) * activity)
    return np.minimum(b, 1.0)


def two_racks(a100_share: float, rack_limit_w: float = 36_000.0) -> Topology:
    # Two racks of 32 GPUs, 24 kW usable each beside 11.2 kW (H100) of server overhead: 17.6 kW
    # for GPUs, which 16 at 700 W and 16 at 400 W fill. The row and the site do not bind.
    return generate_topology(
        64,
        servers_per_rack=4,
        a100_share=a100_share,
        rack_limit_w=rack_limit_w,
        rack_derating=0.8,
        row_limit_w=1e6,
        site_limit_w=1e6,
    )


def layout() -> tuple[NDArray[np.int8], NDArray[np.int32]]:
    """Rack 0: job (Flex 1) beside Flex 0 serving; rack 1: job beside Flex 3 sweeps."""
    tier = np.array([1] * 16 + [0] * 16 + [1] * 16 + [3] * 16, dtype=np.int8)
    job = np.array([0] * 16 + [-1] * 16 + [0] * 16 + [-1] * 16, dtype=np.int32)
    return tier, job


def cold(
    topo: Topology, fleet: FleetState, tier: NDArray[np.int8], job: NDArray[np.int32] | None
) -> Decision:
    return decide(
        topo,
        fleet,
        tier=tier,
        limits=Limits(),
        settings=SETTINGS,
        state=None,
        now_s=1.0,
        sync_job=job,
    )[0]


def test_members_beyond_the_slowest_give_their_power_to_the_sweeps_beside_them() -> None:
    topo = two_racks(a100_share=0.0)
    tier, job = layout()
    fleet = busy_fleet(topo, np.full(64, 1.0), 1.0)
    plain = cold(topo, fleet, tier, None)
    paced = cold(topo, fleet, tier, job)
    members = job == 0
    sweeps = tier == 3
    # Unpaced, rack 1's members get their full draw while rack 0's breaker holds theirs at 400 W:
    # the job steps at 400 W and the 300 W above it on rack 1 buy nothing.
    assert plain.cap_w[:16] == pytest.approx(400.0, rel=1e-6)
    assert plain.cap_w[32:48] == pytest.approx(700.0, rel=1e-6)
    # Paced, every member sits at the slowest member's cap, and the sweeps get what rack 1 freed.
    np.testing.assert_allclose(paced.cap_w[members], 400.0, rtol=1e-6)
    np.testing.assert_allclose(paced.cap_w[sweeps], 700.0, rtol=1e-6)
    assert paced.cap_w[sweeps].sum() - plain.cap_w[sweeps].sum() == pytest.approx(16 * 300.0)
    # Flex 0 is untouched, and no limit moves.
    np.testing.assert_array_equal(paced.cap_w[tier == 0], plain.cap_w[tier == 0])
    check_limits(topo, paced)


def test_members_of_different_models_keep_one_clock() -> None:
    # Servers alternate H100 / A100: 8.6 kW of overhead and 8.8 kW of Flex 0 leave the members
    # of rack 0 4.4 kW, about half their draw.
    topo = two_racks(a100_share=0.5, rack_limit_w=27_250.0)
    tier, job = layout()
    fleet = busy_fleet(topo, np.full(64, 1.0), 1.0)
    plain = cold(topo, fleet, tier, None)
    paced = cold(topo, fleet, tier, job)
    members = job == 0
    b_plain = pace(topo, plain.cap_w, 0.9)[members]
    b_paced = pace(topo, paced.cap_w, 0.9)[members]
    assert b_plain.max() - b_plain.min() > 0.1  # the breakers split the job unevenly
    # H100 and A100 members end at one clock. Water-filling shares a rack's power in proportion
    # to each GPU's cap range, which puts the two models at different clocks; what the faster
    # model gives back lifts the slower one, so the job steps faster than unpaced.
    np.testing.assert_allclose(b_paced, b_paced[0], rtol=1e-9)
    assert b_paced[0] > b_plain.min() + 0.01
    check_limits(topo, paced)


def test_a_job_no_breaker_holds_back_is_left_alone() -> None:
    topo = generate_topology(
        64, servers_per_rack=4, rack_limit_w=1e6, row_limit_w=1e6, site_limit_w=1e6
    )
    tier, job = layout()
    fleet = busy_fleet(topo, np.full(64, 0.8), 1.0)
    plain = cold(topo, fleet, tier, None)
    paced = cold(topo, fleet, tier, job)
    np.testing.assert_array_equal(paced.cap_w, plain.cap_w)


def test_sync_job_of_the_wrong_length_is_refused() -> None:
    topo = two_racks(a100_share=0.0)
    tier, _ = layout()
    fleet = busy_fleet(topo, np.full(64, 1.0), 1.0)
    with pytest.raises(PolicyError, match="sync_job"):
        cold(topo, fleet, tier, np.zeros(10, dtype=np.int32))


@settings(max_examples=60, deadline=None)
@given(
    inst=instances(),
    n_jobs=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    site_frac=st.sampled_from([None, 0.5, 0.8]),
    stale_first=st.booleans(),
)
def test_pacing_keeps_every_limit_and_never_slows_a_job(
    inst: Instance, n_jobs: int, seed: int, site_frac: float | None, stale_first: bool
) -> None:
    topo = inst.topology
    rng = np.random.default_rng(seed)
    job = rng.integers(-1, n_jobs, size=topo.n_gpus).astype(np.int32)
    site_w = None if site_frac is None else float(topo.levels[-1].limit_w[0]) * site_frac
    stale = np.zeros(topo.n_racks, dtype=bool)
    stale[0] = stale_first
    state_plain: DecisionState | None = None
    state_paced: DecisionState | None = None
    for now, scale in ((1.0, 1.0), (2.0, 0.7), (4.0, 1.0)):
        fleet = busy_fleet(topo, np.clip(inst.demand_frac * scale + 0.2, 0, 1), now)
        limits = Limits(site_limit_w=site_w)
        plain, state_plain = decide(
            topo,
            fleet,
            tier=inst.tier,
            limits=limits,
            settings=SETTINGS,
            state=state_plain,
            now_s=now,
            stale_rack=stale,
        )
        paced, state_paced = decide(
            topo,
            fleet,
            tier=inst.tier,
            limits=limits,
            settings=SETTINGS,
            state=state_paced,
            now_s=now,
            stale_rack=stale,
            sync_job=job,
        )
        stale_gpu = stale[topo.gpu_group[topo.rack_level]]
        check_limits(topo, paced)
        if now == 1.0:
            # Cold (no smoothing yet): a job's slowest member is never slower for the pacing.
            # Power above a GPU's estimated demand is surplus it has no use for, so the pace is
            # judged on what the caps grant of that demand.
            live = ~stale_gpu
            b_plain = pace(topo, np.minimum(plain.cap_w, plain.demand_w), 0.9)
            b_paced = pace(topo, np.minimum(paced.cap_w, paced.demand_w), 0.9)
            for j in range(n_jobs):
                m = (job == j) & live & (fleet.util > 0)
                if m.any():
                    assert b_paced[m].min() >= b_plain[m].min() - 1e-9
