"""An independent solver agrees: HiGHS's weighted LP grants every tier the same total power.

Nested limits with unit coefficients form a polymatroid, on which serving tiers greedily in
priority order is LP-optimal for any decreasing weights; so although the LP says nothing about
fairness inside a tier, its per-tier totals must equal the progressive filling's.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings

from bench._highs import solve_weighted_lp
from policies.capping import allocate
from policies.plan import CappingPlan
from policies.tiers import N_TIERS
from tests.policies.pol_instances import Instance, instances


@settings(max_examples=40)
@given(inst=instances())
def test_tier_totals_match_the_weighted_lp(inst: Instance) -> None:
    topo = inst.topology
    lo, hi = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    demand = lo + inst.demand_frac * (hi - lo)
    usable = tuple(lv.usable_w for lv in topo.levels)
    args = {"floor_w": lo, "demand_w": demand, "max_w": hi, "tier": inst.tier, "usable_w": usable}
    ours = allocate(CappingPlan.build(topo), **args)
    assume(not any(flags.any() for flags in ours.infeasible))
    lp_cap, _ = solve_weighted_lp(topo, **args)
    scale = max(float(hi.sum()), 1.0)
    for t in range(N_TIERS):
        sel = inst.tier == t
        ours_t = np.minimum(ours.cap_w[sel], demand[sel]).sum()
        lp_t = np.minimum(lp_cap[sel], demand[sel]).sum()
        assert abs(ours_t - lp_t) <= 1e-6 * scale, f"tier {t}"
    assert abs(ours.cap_w.sum() - lp_cap.sum()) <= 1e-6 * scale
