"""The oracle: optimal on small instances (against brute force), and no controller beats it."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import loop
from simulator.oracle import ORACLE_WEIGHTS, Curves, floor_power_w, solve
from simulator.oracle_run import oracle_keys
from simulator.physics import ALPHA_COMPUTE, ALPHA_DECODE, IDLE_W, KNEE, PEAK_W
from simulator.scenario import load_scenario
from simulator.summary import TIER_WEIGHTS
from tests.policies.test_pol_capping import one_rack

pytest.importorskip("highspy")

SCENARIOS = Path(__file__).parents[2] / "simulator" / "scenarios"
TOL = np.array([0.0, 0.10, 0.25, 0.50])
GRID = 41


def curves_for(activity: np.ndarray, alpha: np.ndarray) -> Curves:
    n = activity.size
    model = np.zeros(n, dtype=np.int64)  # H100
    return Curves(
        idle_w=IDLE_W[model],
        span_w=PEAK_W[model] - IDLE_W[model],
        activity=activity,
        static_frac=np.zeros(n),
        knee=KNEE[model],
        alpha=alpha,
        min_clock_frac=np.full(n, 345.0 / 1980.0),
        min_cap_w=np.full(n, 200.0),
    )


def brute_force(
    curves: Curves, tier: np.ndarray, site_w: float, floors_kept: int
) -> tuple[float, np.ndarray]:
    """Best weighted speed over a grid of draws per GPU, with the floors the oracle kept."""
    low, top = curves.bounds_w()
    floor = np.maximum(floor_power_w(curves, 1.0 - TOL[tier]), low)
    lower = np.where(tier < floors_kept, np.minimum(floor, top), low)
    grids = [np.linspace(lo, hi, GRID) for lo, hi in zip(lower, top, strict=True)]
    combos = np.array(list(itertools.product(*grids)))
    ok = combos.sum(axis=1) <= site_w * (1 + 1e-9)
    combos = combos[ok]
    w = np.asarray(ORACLE_WEIGHTS)[tier]
    speeds = curves.speed_at(combos)  # broadcast: one row per combination
    values = speeds @ w
    best = int(np.argmax(values))
    return float(values[best]), combos[best]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 3),
    data=st.data(),
    site_frac=st.floats(0.3, 1.1),
)
def test_oracle_is_optimal_against_brute_force(n: int, data: st.DataObject, site_frac: float):
    activity = np.asarray(data.draw(st.lists(st.floats(0.3, 1.0), min_size=n, max_size=n)))
    exponent = st.sampled_from([ALPHA_COMPUTE, ALPHA_DECODE, 0.6])
    alpha = np.asarray(data.draw(st.lists(exponent, min_size=n, max_size=n)))
    tier = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int8)
    curves = curves_for(activity, alpha)
    low, top = curves.bounds_w()
    site_w = float(low.sum() + site_frac * (top.sum() - low.sum()))
    topo = one_rack(n, site_w)
    usable = tuple(
        np.minimum(lv.usable_w, site_w) if k == len(topo.levels) - 1 else lv.usable_w
        for k, lv in enumerate(topo.levels)
    )
    sol = solve(topo, curves, usable_w=usable, tier=tier, working=np.ones(n, dtype=bool))
    assert sol.power_w.sum() <= site_w * (1 + 1e-7) + 1e-6
    assert np.all(sol.power_w >= low - 1e-6)
    assert np.all(sol.power_w <= top + 1e-6)
    best, _ = brute_force(curves, tier, site_w, sol.floors_kept)
    w = np.asarray(ORACLE_WEIGHTS)[tier]
    achieved = float(curves.speed_at(sol.power_w) @ w)
    scale = float(w.sum())
    # The LP's value bounds every allocation (the hull lies on or above the curve) ...
    assert sol.value >= best - 1e-6 * scale
    # ... and its own allocation, on the true curve, is at least the best on the grid.
    # (Within the hull's chord error: a linear piece is indifferent along its length, where the
    # curve prefers its middle.)
    assert achieved >= best - 1e-3 * scale
    # The hull's gap below the knee is small.
    assert sol.value <= achieved + 0.01 * scale
    np.testing.assert_allclose(sol.tier_rate @ np.asarray(ORACLE_WEIGHTS), sol.value, rtol=1e-6)
    # Floors the oracle reports kept are kept.
    kept = tier < sol.floors_kept
    assert np.all(curves.speed_at(sol.power_w)[kept] >= 1.0 - TOL[tier][kept] - 1e-6)


def test_oracle_weights_are_the_scoreboards() -> None:
    assert tuple(ORACLE_WEIGHTS) == tuple(TIER_WEIGHTS)


def test_no_oracle_keys_are_none() -> None:
    assert oracle_keys(None) == {"oracle_ratio": None, "seconds_below_floor": None, "oracle": None}


@pytest.mark.parametrize("controller", ["rheostat", "static", "threshold"])
def test_no_controller_beats_the_oracle(controller: str) -> None:
    # The site limit drops 30 % at 600 s: 120 s either side of it, so every limit binds.
    scenario = load_scenario(SCENARIOS / "budget-step.yaml")
    scenario = scenario.shortened(720.0)
    result = loop.run(scenario, controller=controller)
    assert result.oracle is not None
    summary = result.oracle.summary()
    assert result.oracle.solves >= 70  # every 10 s of 720 s
    assert result.oracle.unsolved == 0
    ratio = summary["oracle_ratio"]["weighted"]
    assert ratio is not None
    assert ratio <= 1.0 + 1e-3, summary


def test_with_no_binding_limit_the_oracle_is_what_every_gpu_runs_flat_out() -> None:
    # `steady` stays under its contract: uncapped, every GPU runs at its top clock, and so does
    # the oracle, light inference under its min cap included.
    scenario = load_scenario(SCENARIOS / "steady.yaml").shortened(120.0)
    result = loop.run(scenario, controller="none")
    assert result.oracle is not None
    ratio = result.oracle.summary()["oracle_ratio"]
    for value in ratio.values():
        assert value is None or value == pytest.approx(1.0, abs=1e-3)
