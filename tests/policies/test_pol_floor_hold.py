"""A synchronous job keeps the tier floor of its compute phase through its quiet phases.

A checkpoint outlasts the demand and activity holds; sized from the present draw alone, a job's
floor would fall with it, and the job would resume below its floor until the controller saw it.
"""

from __future__ import annotations

import numpy as np

from policies.decision import (
    CappingSettings,
    DecisionState,
    DvfsSettings,
    Limits,
    PolicySettings,
)
from policies.fleet import FleetState
from policies.pipeline import decide
from policies.workspace import DecisionWorkspace
from tests.policies.test_pol_capping import one_rack

#: Two Flex 1 GPUs and two Flex 3 GPUs; the first of each pair in a synchronous job.
TIER = np.array([1, 1, 3, 3], dtype=np.int8)
SYNC = np.array([0, -1, 1, -1], dtype=np.int32)


def fleet_at(util: float, now_s: float, cap_w: np.ndarray) -> FleetState:
    """Four H100s at one SM activity, drawing what that activity draws at their caps."""
    fleet = FleetState.empty(one_rack(4, np.inf))
    fleet.util = np.full(4, util)
    fleet.mem_util = np.full(4, 0.1)
    fleet.power_w = np.minimum(80.0 + 620.0 * util, cap_w)
    fleet.cap_w = cap_w.copy()
    fleet.rack_last_seen_s[:] = now_s
    return fleet


def run(hold_s: float, quiet_s: int) -> tuple[np.ndarray, np.ndarray]:
    """Busy ticks, then `quiet_s` one-second ticks of a checkpoint (SM activity 0.1), under a
    site limit every GPU's compute floor fits in: the tier floors and caps of the last tick."""
    topo = one_rack(4, 1600.0)
    settings = PolicySettings(capping=CappingSettings(floor_hold_s=hold_s))
    state: DecisionState | None = None
    cap = topo.gpu_max_cap_w.copy()
    floors = np.zeros(4)
    for k in range(20 + quiet_s):
        util = 0.97 if k < 20 else 0.1
        decision, state = decide(
            topo,
            fleet_at(util, float(k), cap),
            tier=TIER,
            limits=Limits(),
            settings=settings,
            state=state,
            now_s=float(k),
            sync_job=SYNC,
        )
        cap = np.array(decision.cap_w)
        assert state is not None
        assert state.floor_basis_w is not None
        floors = np.array(state.floor_basis_w)
    return floors, cap


def test_sync_members_keep_their_compute_floor_through_a_checkpoint() -> None:
    basis, cap = run(1800.0, 60)
    busy_draw = 80.0 + 620.0 * 0.97
    # Members still size their floors for (nearly) their compute draw after a minute of quiet...
    assert basis[0] >= 80.0 + (busy_draw - 80.0) * np.exp(-60.0 / 1800.0) - 1e-6
    assert basis[2] >= 80.0 + (busy_draw - 80.0) * np.exp(-60.0 / 1800.0) - 1e-6
    # ... GPUs in no job follow their present draw ...
    assert basis[1] < 0.5 * busy_draw
    assert basis[3] < 0.5 * busy_draw
    # ... and the Flex 1 member's cap stays at its floor (the policy's 0.9 speed) or above.
    floor_1 = 80.0 + (basis[0] - 80.0) * 0.9 ** (3 / 1.1)
    assert cap[0] >= floor_1 - 1e-6
    assert cap.sum() <= 1600.0 * (1 + 1e-9)


def test_without_the_hold_a_checkpoint_drops_the_floor() -> None:
    basis, cap = run(0.0, 60)
    assert basis[0] < 0.5 * (80.0 + 620.0 * 0.97)  # the member's floor followed its draw down
    floor_1 = 80.0 + 620.0 * 0.97 * 0.9 ** (3 / 1.1)
    assert cap[0] < floor_1  # the power went to the others: the job resumes below its floor


def test_a_service_floor_is_not_held_past_its_activity() -> None:
    # A Flex 0 service drawing under what its activity models (memory-bound decode) is sized
    # for the modelled draw of its held activity, not held once more after a burst; the
    # synchronous job's members keep their compute floor through the same dip.
    topo = one_rack(4, np.inf)
    settings = PolicySettings(
        capping=CappingSettings(demand_hold_s=3.0),
        dvfs=DvfsSettings(enabled=False, activity_hold_s=10.0),
    )
    sync = np.array([0, -1, 0, -1], dtype=np.int32)
    service = sync < 0
    workspace = DecisionWorkspace(4)
    cap = topo.gpu_max_cap_w.copy()
    state: DecisionState | None = None
    for k, util in enumerate((0.97, 0.97, 0.3)):
        fleet = fleet_at(util, float(k), cap)
        fleet.power_w[service] = 150.0
        decision, state = decide(
            topo,
            fleet,
            tier=np.zeros(4, dtype=np.int8),
            limits=Limits(),
            settings=settings,
            state=state,
            now_s=float(k),
            sync_job=sync,
            workspace=workspace,
        )
        cap = np.array(decision.cap_w)
    held_activity = 0.3 + (0.97 - 0.3) * np.exp(-1.0 / 10.0)
    floor = workspace.tier_floor
    np.testing.assert_allclose(floor[service], 80.0 + 620.0 * held_activity, rtol=1e-9)
    assert np.all(floor[~service] > 0.95 * (80.0 + 620.0 * 0.97))


def test_an_unpinned_gpu_floor_is_its_draw() -> None:
    # Busy and drawing well under its cap, a GPU asks the unpinned headroom over its draw; its
    # floor is sized for the draw itself, not for less (the pinned GPU's larger headroom).
    topo = one_rack(4, np.inf)
    fleet = FleetState.empty(topo)
    fleet.util = np.full(4, 0.1)
    fleet.mem_util = np.full(4, 0.1)
    fleet.power_w = np.full(4, 400.0)
    fleet.cap_w = topo.gpu_max_cap_w.copy()
    fleet.rack_last_seen_s[:] = 0.0
    workspace = DecisionWorkspace(4)
    decide(
        topo,
        fleet,
        tier=np.zeros(4, dtype=np.int8),
        limits=Limits(),
        settings=PolicySettings(),
        state=None,
        now_s=0.0,
        workspace=workspace,
    )
    assert float(topo.gpu_max_cap_w[0]) * 0.97 > 400.0  # not pinned at its cap
    # Flex 0's floor is its whole uncapped draw.
    np.testing.assert_allclose(workspace.tier_floor, 400.0, rtol=1e-9)
