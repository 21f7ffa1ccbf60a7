"""The allocation as one weighted LP solved by HiGHS: the yardstick the vectorized core beats.

Each GPU's cap is split into its floor, a tier part (up to its demand) and a surplus part (up to
its max cap); every group of every level is one row. Tier parts weigh 10^(3 - tier) and surplus
0.1, so the LP honours the same strict priorities (though not the fairness inside a tier, which
no single LP expresses). Lives in bench/ because highspy is a development dependency only,
imported when first used.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray

from policies.topology import Topology
from simulator.oracle import quiet_stdout

FloatArray = NDArray[np.float64]

TIER_WEIGHT = np.array([1000.0, 100.0, 10.0, 1.0])
SURPLUS_WEIGHT = 0.1


def solve_weighted_lp(
    topology: Topology,
    *,
    floor_w: FloatArray,
    demand_w: FloatArray,
    max_w: FloatArray,
    tier: NDArray[np.int8],
    usable_w: tuple[FloatArray, ...],
) -> tuple[FloatArray, float]:
    """Caps from the weighted LP and the time HiGHS took to load and solve it. Units: W, s."""
    import highspy  # a development dependency, absent from plain installs

    n = topology.n_gpus
    n_levels = len(topology.levels)
    row_offset = np.cumsum([0] + [lv.size for lv in topology.levels])
    # Column j < n is GPU j's tier part, column n + j its surplus part; both sit in one row per
    # level, so the column-wise matrix has n_levels entries per column.
    rows = np.stack([topology.gpu_group[k] + row_offset[k] for k in range(n_levels)], axis=1)
    index = np.concatenate([rows.reshape(-1), rows.reshape(-1)]).astype(np.int32)
    start = np.arange(0, 2 * n * n_levels + 1, n_levels, dtype=np.int32)
    floor_use = [
        topology.group_sum(k, floor_w) + topology.overhead_under(k) for k in range(n_levels)
    ]
    upper = np.concatenate([u - f for u, f in zip(usable_w, floor_use, strict=True)])
    lp = highspy.HighsLp()
    lp.num_col_ = 2 * n
    lp.num_row_ = int(row_offset[-1])
    lp.col_cost_ = np.concatenate([TIER_WEIGHT[tier], np.full(n, SURPLUS_WEIGHT)])
    lp.col_lower_ = np.zeros(2 * n)
    lp.col_upper_ = np.concatenate([demand_w - floor_w, max_w - demand_w])
    lp.row_lower_ = np.full(lp.num_row_, -highspy.kHighsInf)
    lp.row_upper_ = np.where(np.isfinite(upper), np.maximum(upper, 0.0), highspy.kHighsInf)
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = start
    lp.a_matrix_.index_ = index
    lp.a_matrix_.value_ = np.ones(index.size)
    with quiet_stdout():
        solver = highspy.Highs()  # type: ignore[no-untyped-call]
        solver.setOptionValue("output_flag", False)  # noqa: FBT003 - HiGHS API
        began = time.perf_counter()
        solver.passModel(lp)
        solver.run()
        elapsed = time.perf_counter() - began
    values = np.asarray(solver.getSolution().col_value)
    return floor_w + values[:n] + values[n:], elapsed
