"""The decision core's shortcuts against the plain computations they replace.

Each shortcut (sums over equal groups as reshapes, reused tier keys, the per-server revert of
kept cuts) must give what the general computation gives, on random instances.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from policies.capping import REL_TOL
from policies.decision import (
    CappingSettings,
    DecisionState,
    DvfsSettings,
    Limits,
    PolicySettings,
)
from policies.dvfs import ALPHA_MEMORY_BOUND, MIN_ACTIVITY, clock_targets
from policies.pipeline import decide
from policies.plan import CappingPlan
from policies.smoothing import smooth
from policies.topology import Topology, generate_topology
from tests.policies.pol_instances import build_topology, busy_fleet, instances

FloatArray = NDArray[np.float64]


@st.composite
def layouts(draw: st.DrawFn) -> Topology:
    """Topologies with equal servers (the reshape paths) or unequal ones (the general paths)."""
    n_servers = draw(st.integers(1, 12))
    if draw(st.booleans()):
        server_gpus = [draw(st.integers(1, 4))] * n_servers
    else:
        server_gpus = draw(st.lists(st.integers(1, 4), min_size=n_servers, max_size=n_servers))
    per_rack = draw(st.integers(1, n_servers))
    server_rack = [i // per_rack for i in range(n_servers)]
    n_racks = server_rack[-1] + 1
    per_row = draw(st.integers(1, n_racks))
    rack_row = [i // per_row for i in range(n_racks)]
    n_rows = rack_row[-1] + 1
    if draw(st.booleans()):  # racks out of row order: the bincount path
        rack_row = draw(st.permutations(rack_row))
    n_gpus = sum(server_gpus)
    return build_topology(
        server_gpus,
        server_rack,
        rack_row,
        gpu_model=draw(st.lists(st.integers(0, 1), min_size=n_gpus, max_size=n_gpus)),
        server_limit_w=[np.inf] * n_servers,
        rack_limit_w=[np.inf] * n_racks,
        row_limit_w=[np.inf] * n_rows,
        site_limit_w=1e6,
        server_overhead_w=[100.0] * n_servers,
        rack_derating=[1.0] * n_racks,
    )


def plain_up(topo: Topology, per_server: FloatArray) -> list[FloatArray]:
    sums = [per_server]
    for k in range(1, len(topo.levels)):
        parent, size = topo.levels[k - 1].parent, topo.levels[k].size
        sums.append(np.bincount(parent, weights=sums[-1], minlength=size))
    return sums


@settings(max_examples=80)
@given(topo=layouts(), seed=st.integers(0, 2**32 - 1))
def test_group_sums_match_bincount_for_one_and_many_columns(topo: Topology, seed: int) -> None:
    plan = CappingPlan.build(topo)
    rng = np.random.default_rng(seed)
    per_gpu = rng.uniform(0.0, 700.0, topo.n_gpus)
    servers = np.bincount(topo.gpu_server, weights=per_gpu, minlength=plan.n_servers)
    np.testing.assert_allclose(plan.server_sum(per_gpu), servers, rtol=1e-12)
    table = rng.uniform(0.0, 700.0, (plan.n_servers, 4))
    both = plan.up(table)
    for col in range(4):
        for fast, plain in zip(both, plain_up(topo, table[:, col]), strict=True):
            np.testing.assert_allclose(fast[:, col], plain, rtol=1e-12)
    for fast, plain in zip(plan.up(table[:, 0]), plain_up(topo, table[:, 0]), strict=True):
        np.testing.assert_allclose(fast, plain, rtol=1e-12)


def plain_smooth(  # noqa: PLR0917 - mirrors the arguments of the kernel under test
    plan: CappingPlan,
    target: FloatArray,
    previous_w: FloatArray,
    min_w: FloatArray,
    max_w: FloatArray,
    dt_s: float,
    cfg: CappingSettings,
    usable: tuple[FloatArray, ...],
    target_used: tuple[FloatArray, ...],
) -> FloatArray:
    """Rate limit and deadband with masks GPU by GPU: the general form of the smoothing."""
    previous = np.minimum(np.maximum(previous_w, min_w), max_w)
    cap = np.minimum(target, previous + cfg.raise_rate_w_per_s * dt_s)
    small = np.abs(cap - previous) < cfg.deadband_w
    kept_cut = small & (cap < previous)
    cap = np.where(small, previous, cap)
    used = [s + o for s, o in zip(plan.up(plan.server_sum(cap)), plan.overhead_w, strict=True)]
    over = np.zeros(plan.n_servers, dtype=bool)
    for k, path in enumerate(plan.server_path):
        bound = np.maximum(usable[k], target_used[k])
        over |= (used[k] > bound + REL_TOL * np.maximum(np.abs(bound), 1.0))[path]
    revert = kept_cut & over[plan.gpu_server]
    return np.where(revert, target, cap)


@settings(max_examples=150)
@given(
    topo=layouts(),
    seed=st.integers(0, 2**32 - 1),
    deadband=st.sampled_from([0.0, 10.0, 60.0]),
    dt=st.sampled_from([0.0, 0.1, 1.0]),
    squeeze=st.sampled_from(["none", "site", "racks", "some"]),
)
def test_smoothing_shortcuts_match_the_masked_revert(
    topo: Topology, seed: int, deadband: float, dt: float, squeeze: str
) -> None:
    plan = CappingPlan.build(topo)
    rng = np.random.default_rng(seed)
    lo, hi = topo.gpu_min_cap_w, topo.gpu_max_cap_w
    target = rng.uniform(lo, hi)
    # Small moves both ways (kept cuts and skipped raises on one server), large ones, none.
    step = np.where(rng.random(topo.n_gpus) < 0.7, rng.uniform(-15.0, 15.0, topo.n_gpus), 80.0)
    step[rng.random(topo.n_gpus) < 0.1] = 0.0
    # Previous caps may lie outside the models' ranges (a foreign state): both sides clamp them.
    previous = np.maximum(target + step * rng.choice([-1.0, 1.0], topo.n_gpus), 0.0)
    cfg = CappingSettings(deadband_w=deadband)
    target_used = tuple(
        s + o for s, o in zip(plan.up(plan.server_sum(target)), plan.overhead_w, strict=True)
    )
    # Limits at the target's own use leave no room for kept cuts where squeezed.
    usable = [u * 10.0 for u in target_used]
    if squeeze == "site":
        usable[-1] = target_used[-1].copy()
    elif squeeze == "racks":
        usable[1] = target_used[1].copy()
    elif squeeze == "some":
        usable[0] = np.where(rng.random(plan.n_servers) < 0.5, target_used[0], usable[0])
    args = {
        "target_w": target,
        "previous_w": previous,
        "min_w": lo,
        "max_w": hi,
        "dt_s": dt,
        "settings": cfg,
        "usable_w": tuple(usable),
        "target_used_w": target_used,
    }
    fast, used = smooth(plan, **args)
    plain = plain_smooth(plan, target, previous, lo, hi, dt, cfg, tuple(usable), target_used)
    np.testing.assert_array_equal(fast, plain)
    if used is not None:  # handed back only when nothing was reverted: the caps' own sums
        for k, total in enumerate(used):
            expected = plan.up(plan.server_sum(fast))[k] + plan.overhead_w[k]
            np.testing.assert_array_equal(total, expected)


@settings(max_examples=40)
@given(inst=instances(), seed=st.integers(0, 2**32 - 1), in_place=st.booleans())
def test_warm_decisions_follow_changed_tiers(inst, seed: int, in_place: bool) -> None:
    """Tier keys are reused between ticks; a changed tier array (new or mutated) is seen."""
    topo = inst.topology
    rng = np.random.default_rng(seed)
    tier = inst.tier.copy()
    state: DecisionState | None = None
    for tick in range(4):
        fleet = busy_fleet(topo, np.clip(inst.demand_frac + 0.2 * tick, 0.0, 1.0), float(tick))
        if tick >= 2:
            changed = rng.integers(0, 4, topo.n_gpus).astype(np.int8)
            if in_place:
                tier[:] = changed
            else:
                tier = changed
        limits = Limits(site_limit_w=3000.0)
        args = {"tier": tier, "limits": limits, "settings": PolicySettings(), "now_s": tick}
        decision, next_state = decide(topo, fleet, state=state, **args)
        if state is not None:
            fresh_plan = DecisionState(
                cap_w=state.cap_w,
                now_s=state.now_s,
                site_allowed_w=state.site_allowed_w,
                util_held=state.util_held,
                sm_clock_max_mhz=state.sm_clock_max_mhz,
                demand_w=state.demand_w,
                plan=None,
            )
            reference, _ = decide(topo, fleet, state=fresh_plan, **args)
            np.testing.assert_array_equal(decision.cap_w, reference.cap_w)
            np.testing.assert_array_equal(decision.sm_clock_max_mhz, reference.sm_clock_max_mhz)
        state = next_state


def test_generated_fleets_take_the_reshape_paths() -> None:
    """The benchmark's fleet shape must not fall back to the general paths unnoticed."""
    plan = CappingPlan.build(generate_topology(8 * 4 * 20 * 3))
    assert plan.gpus_per_server == 8
    assert plan.children[1] == 4
    assert plan.children[2] == 20


def plain_clocks(
    plan: CappingPlan,
    cap: FloatArray,
    util: FloatArray,
    mem: FloatArray,
    fit: FloatArray,
    *,
    cfg: DvfsSettings,
) -> FloatArray:
    """Clock ceilings with clips and np.where, as the DVFS rules read."""
    lo, hi, step = plan.min_clock_mhz, plan.max_clock_mhz, plan.clock_step_mhz
    # Memory-bound only while the held activity is low too (no compute within the hold).
    seen = np.clip(np.maximum(util, fit), 0.0, 1.0)
    memory_bound = (mem >= MIN_ACTIVITY) & (seen < mem * cfg.memory_bound_ratio)
    keep = (1.0 - cfg.max_loss_frac) ** (1.0 / ALPHA_MEMORY_BOUND)
    lowest = np.minimum(lo + np.ceil((keep * hi - lo) / step) * step, hi)
    clock = np.where(memory_bound, lowest, hi)
    dynamic = (plan.topology.gpu_max_cap_w - plan.idle_w) * np.clip(fit, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.cbrt(np.maximum(cap - plan.idle_w, 0.0) / dynamic)
    fits = np.maximum(np.floor((ratio * hi - lo) / step) * step + lo, lo)
    # The fitted clock guards only GPUs whose held activity is a swing above the current one.
    return np.where(fit - util < cfg.fit_min_swing, clock, np.minimum(clock, fits))


@settings(max_examples=80)
@given(topo=layouts(), seed=st.integers(0, 2**32 - 1), swing=st.sampled_from([None, 0.0, 0.3]))
def test_clock_selects_match_clips_and_where(
    topo: Topology, seed: int, swing: float | None
) -> None:
    cfg = DvfsSettings() if swing is None else DvfsSettings(fit_min_swing=swing)
    plan = CappingPlan.build(topo)
    rng = np.random.default_rng(seed)
    n = topo.n_gpus
    cap = rng.uniform(topo.gpu_min_cap_w, topo.gpu_max_cap_w)
    # Activities outside [0, 1] too (bad telemetry), zeros and memory-bound mixes.
    util = rng.choice([-0.2, 0.0, 0.1, 0.2, 0.5, 1.0, 1.3], n) * rng.uniform(0.5, 1.0, n)
    mem = rng.choice([0.0, 0.04, 0.3, 0.8, 1.2, 2.0], n)
    fit = np.maximum(util, rng.choice([-0.1, 0.0, 0.6, 1.0, 1.5], n))
    clock, _ = clock_targets(plan, cap_w=cap, util=util, mem_util=mem, settings=cfg, fit_util=fit)
    np.testing.assert_array_equal(clock, plain_clocks(plan, cap, util, mem, fit, cfg=cfg))


def test_fitted_clock_guards_only_a_pending_surge() -> None:
    """Under one binding cap, a GPU in steady compute keeps its max clock (its limiter holds the
    cap); one in a quiet phase after full activity gets the clock that fits the surge."""
    plan = CappingPlan.build(generate_topology(8))
    n = plan.topology.n_gpus
    hi = plan.max_clock_mhz
    cap = (plan.idle_w + plan.topology.gpu_max_cap_w) / 2.0
    util = np.where(np.arange(n) % 2 == 0, 1.0, 0.2)
    fit = np.ones(n)
    mem = np.zeros(n)
    swing, _ = clock_targets(
        plan, cap_w=cap, util=util, mem_util=mem, settings=DvfsSettings(), fit_util=fit
    )
    np.testing.assert_array_equal(swing[0::2], hi[0::2])
    assert np.all(swing[1::2] < hi[1::2])
    everywhere, _ = clock_targets(
        plan,
        cap_w=cap,
        util=util,
        mem_util=mem,
        settings=DvfsSettings(fit_min_swing=0.0),
        fit_util=fit,
    )
    np.testing.assert_array_equal(everywhere[1::2], swing[1::2])
    assert np.all(everywhere[0::2] < hi[0::2])
