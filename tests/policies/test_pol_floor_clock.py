"""What a GPU's clock and draw tell the tier floors, and the headroom of a tier with no slack.

A GPU held back by its cap draws its cap: its demand estimate asks a tenth more, and its SM
activity may read 100 % for less than full power. Its limiter has lowered its clock until its
draw fits, so the floors' own model read backwards gives what it would draw uncapped. A tier
that tolerates no slowdown keeps the pinned headroom while it draws under its cap, so that a
rise in load is not capped before it shows; its floor is still its draw.
"""

from __future__ import annotations

import numpy as np

from policies.decision import Limits, PolicySettings
from policies.fleet import FleetState
from policies.floors import FLOOR_KNEE
from policies.pipeline import decide
from policies.workspace import DecisionWorkspace
from tests.policies.test_pol_capping import one_rack

IDLE_W = 80.0  # the H100's idle draw in the policy's model table (model 0)
MAX_MHZ = 1980.0


def g(x: float) -> float:
    return x * max(x, FLOOR_KNEE) ** 2


def floors(
    *, tier: int, util: float, power_w: float, cap_w: float, clock_frac: float
) -> tuple[np.ndarray, np.ndarray]:
    """One tick on four identical H100s: their tier floors and their demand estimate."""
    topo = one_rack(4, np.inf)
    assert float(topo.gpu_max_cap_w[0]) == 700.0
    fleet = FleetState.empty(topo)
    fleet.util = np.full(4, util)
    fleet.mem_util = np.full(4, 0.1)
    fleet.power_w = np.full(4, power_w)
    fleet.cap_w = np.full(4, cap_w)
    fleet.sm_clock_mhz = np.full(4, clock_frac * MAX_MHZ)
    fleet.rack_last_seen_s[:] = 0.0
    workspace = DecisionWorkspace(4)
    decision, _ = decide(
        topo,
        fleet,
        tier=np.full(4, tier, dtype=np.int8),
        limits=Limits(),
        settings=PolicySettings(),
        state=None,
        now_s=0.0,
        workspace=workspace,
    )
    return workspace.tier_floor.copy(), np.array(decision.demand_w)


def test_a_gpu_barely_held_back_is_floored_at_what_its_clock_implies() -> None:
    # Pinned at 500 W with its clock at 0.98 of the top: it wants about 6 % over its cap, not
    # the tenth the pinned headroom asks. Flex 0's floor is its whole uncapped draw.
    floor, demand = floors(tier=0, util=0.7, power_w=500.0, cap_w=500.0, clock_frac=0.98)
    implied = IDLE_W + (500.0 - IDLE_W) / g(0.98)
    np.testing.assert_allclose(floor, implied, rtol=1e-9)
    assert np.all(floor < 0.99 * 550.0)
    # The demand still asks the pinned headroom: the floors bound only what is reserved first.
    np.testing.assert_allclose(demand, 550.0, rtol=1e-9)


def test_without_a_clock_reading_the_held_back_estimate_stands() -> None:
    # A clock of 0 (not reported) bounds nothing: the floor is the cap plus the pinned headroom.
    floor, _ = floors(tier=0, util=0.7, power_w=500.0, cap_w=500.0, clock_frac=0.0)
    np.testing.assert_allclose(floor, 550.0, rtol=1e-9)


def test_a_clock_slowed_by_something_else_only_raises_the_bound() -> None:
    # Pinned at 500 W with its clock at 0.6 of the top (heat, a power brake): the implied draw
    # is above the estimate, which stands.
    floor, _ = floors(tier=0, util=0.7, power_w=500.0, cap_w=500.0, clock_frac=0.6)
    np.testing.assert_allclose(floor, 550.0, rtol=1e-9)


def test_saturated_activity_is_bounded_by_the_clock() -> None:
    # A training GPU reads 100 % SM activity while drawing 0.97 of full activity's power. Held
    # at 573 W its clock is where 80 + 620 x 0.97 x g(x) = 573: the floor for Flex 1's 10 %
    # comes from that U, not from the 700 W the saturated reading models.
    true_u = IDLE_W + 620.0 * 0.97
    x_lo, x_hi = 0.85, 1.0  # solve 80 + (true U - 80) g(x) = 573 for x by bisection
    for _ in range(60):
        x = 0.5 * (x_lo + x_hi)
        if g(x) * (true_u - IDLE_W) + IDLE_W > 573.0:
            x_hi = x
        else:
            x_lo = x
    floor, _ = floors(tier=1, util=1.0, power_w=573.0, cap_w=573.0, clock_frac=x)
    keep = g(0.9 ** (1 / 1.1))
    np.testing.assert_allclose(floor, IDLE_W + (true_u - IDLE_W) * keep, rtol=1e-6)
    assert np.all(floor < IDLE_W + 620.0 * keep - 10.0)  # what util 1.0 alone would reserve


def test_an_unpinned_flex0_gpu_asks_the_pinned_headroom_and_is_floored_at_its_draw() -> None:
    floor0, demand0 = floors(tier=0, util=0.3, power_w=400.0, cap_w=700.0, clock_frac=1.0)
    floor1, demand1 = floors(tier=1, util=0.3, power_w=400.0, cap_w=700.0, clock_frac=1.0)
    np.testing.assert_allclose(demand0, 440.0, rtol=1e-9)  # 10 % (at least 20 W)
    np.testing.assert_allclose(demand1, 420.0, rtol=1e-9)  # 5 % (at least 5 W)
    np.testing.assert_allclose(floor0, 400.0, rtol=1e-9)
    assert np.all(floor1 < 400.0)


def test_a_flex0_gpu_whose_headroom_reaches_the_max_cap_is_floored_at_its_draw() -> None:
    # Drawing 650 W under its 700 W cap (not pinned): the pinned headroom asks 715 W, clipped
    # to the max cap, so the estimate alone cannot tell its draw; the reading can. The max
    # reserved as Flex 0's floor would come before every lower tier's floor for 50 W it
    # does not draw.
    floor, demand = floors(tier=0, util=0.3, power_w=650.0, cap_w=700.0, clock_frac=1.0)
    np.testing.assert_allclose(demand, 700.0, rtol=1e-9)
    np.testing.assert_allclose(floor, 650.0, rtol=1e-9)
