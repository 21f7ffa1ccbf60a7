"""Clock ceilings bounded by each Flex tier's tolerated slowdown (`policies.dvfs`)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decision import DvfsSettings, Limits, PolicySettings
from policies.dvfs import ALPHA_MEMORY_BOUND, clock_targets
from policies.fleet import FleetState
from policies.gpu_models import GPU_MODELS
from policies.pipeline import decide
from policies.plan import CappingPlan
from policies.tiers import DEFAULT_FLEX_TOLERANCES, N_TIERS
from policies.topology import Level, Topology, generate_topology

#: Mixed H100 and A100 servers, so clocks differ by model.
TOPOLOGY = generate_topology(64)
N = TOPOLOGY.n_gpus
DEFAULT_DVFS = DvfsSettings()


def targets(
    *,
    tier: np.ndarray | None,
    util: np.ndarray,
    mem_util: np.ndarray,
    cap_w: np.ndarray | None = None,
    tolerances: tuple[float, ...] = DEFAULT_FLEX_TOLERANCES,
    dvfs: DvfsSettings = DEFAULT_DVFS,
) -> tuple[np.ndarray, float, CappingPlan]:
    plan = CappingPlan.build(TOPOLOGY)
    clock, saving = clock_targets(
        plan,
        cap_w=TOPOLOGY.gpu_max_cap_w.copy() if cap_w is None else cap_w,
        util=util,
        mem_util=mem_util,
        settings=dvfs,
        tier=tier,
        tolerances=tolerances,
    )
    return clock, saving, plan


def memory_bound() -> tuple[np.ndarray, np.ndarray]:
    """Every GPU busy on memory (decode-like): low SM activity, high memory activity."""
    return np.full(N, 0.2), np.full(N, 0.8)


def test_flex0_memory_bound_gpu_is_never_locked_below_its_max_clock() -> None:
    """Flex 0 tolerates no slowdown, so an uncapped memory-bound Flex 0 GPU keeps its top clock
    while the same work in a tolerant tier is locked (the energy saving stays where allowed)."""
    util, mem = memory_bound()
    tier = np.arange(N, dtype=np.int8) % N_TIERS
    clock, saving, plan = targets(tier=tier, util=util, mem_util=mem)
    flex0 = tier == 0
    np.testing.assert_array_equal(clock[flex0], plan.max_clock_mhz[flex0])
    assert np.all(clock[~flex0] < plan.max_clock_mhz[~flex0])
    assert saving > 0.0


def test_without_tiers_every_memory_bound_gpu_may_lose_the_configured_loss() -> None:
    util, mem = memory_bound()
    clock, _, plan = targets(tier=None, util=util, mem_util=mem)
    speed = (clock / plan.max_clock_mhz) ** ALPHA_MEMORY_BOUND
    assert np.all(clock < plan.max_clock_mhz)
    assert np.all(speed >= 1.0 - DvfsSettings().max_loss_frac - 1e-12)


def test_flex0_still_gets_the_clock_its_binding_cap_forces() -> None:
    """The exemption covers energy locks only: a Flex 0 GPU whose cap binds (the limits left it
    less than it draws) gets the clock at which its power fits that cap."""
    util = np.full(N, 1.0)
    mem = np.full(N, 0.3)
    tier = np.zeros(N, np.int8)
    cap = TOPOLOGY.gpu_min_cap_w + 0.25 * (TOPOLOGY.gpu_max_cap_w - TOPOLOGY.gpu_min_cap_w)
    clock, _, plan = targets(
        tier=tier, util=util, mem_util=mem, cap_w=cap, dvfs=DvfsSettings(fit_min_swing=0.0)
    )
    assert np.all(clock < plan.max_clock_mhz)
    power = plan.idle_w + (TOPOLOGY.gpu_max_cap_w - plan.idle_w) * (clock / plan.max_clock_mhz) ** 3
    assert np.all(power <= cap + 1e-9)


@settings(max_examples=80, deadline=None)
@given(
    tolerances=st.tuples(*[st.floats(0.0, 0.9) for _ in range(N_TIERS)]),
    max_loss=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_no_memory_bound_lock_costs_a_tier_more_than_it_tolerates(
    tolerances: tuple[float, ...], max_loss: float, seed: int
) -> None:
    """Where the cap does not bind, a GPU's ceiling costs it (under the policy's memory-bound
    model) no more than its tier's tolerance nor the configured loss, and a GPU is locked to
    the lowest grid clock that does so: the bound takes no more energy saving than it must."""
    rng = np.random.default_rng(seed)
    tier = rng.integers(0, N_TIERS, N).astype(np.int8)
    util = rng.uniform(0.0, 1.0, N)
    mem = rng.uniform(0.0, 1.0, N)
    clock, _, plan = targets(
        tier=tier,
        util=util,
        mem_util=mem,
        tolerances=tolerances,
        dvfs=DvfsSettings(max_loss_frac=max_loss),
    )
    allowed = np.minimum(np.asarray(tolerances)[tier], max_loss)
    top = plan.max_clock_mhz
    speed = (clock / top) ** ALPHA_MEMORY_BOUND
    assert np.all(speed >= 1.0 - allowed - 1e-12)
    locked = clock < top
    # One grid step lower would cost more than allowed, unless already at the lowest clock.
    lower = np.maximum(clock - plan.clock_step_mhz, 0.0)
    tighter = (lower / top) ** ALPHA_MEMORY_BOUND < 1.0 - allowed
    assert np.all(tighter[locked] | (clock[locked] <= plan.min_clock_mhz[locked]))
    # Locks happen only on memory-bound work whose tier allows some loss.
    is_memory_bound = (mem >= 0.05) & (util < DvfsSettings().memory_bound_ratio * mem)
    assert not np.any(locked & ~is_memory_bound)
    assert not np.any(locked & (allowed <= 0.0))


def test_memory_bound_lock_waits_for_the_held_activity_to_fall() -> None:
    """Decode between prefill bursts looks memory-bound between bursts; locked then, the next
    burst runs compute at the locked clock. While the held activity shows recent compute the
    GPU is not locked; once it has decayed, it is."""
    util, mem = memory_bound()
    tier = np.full(N, 2, np.int8)
    plan = CappingPlan.build(TOPOLOGY)
    cap = TOPOLOGY.gpu_max_cap_w.copy()
    recent, _ = clock_targets(
        plan,
        cap_w=cap,
        util=util,
        mem_util=mem,
        settings=DEFAULT_DVFS,
        fit_util=np.full(N, 0.9),
        tier=tier,
    )
    np.testing.assert_array_equal(recent, plan.max_clock_mhz)
    decayed, _ = clock_targets(
        plan, cap_w=cap, util=util, mem_util=mem, settings=DEFAULT_DVFS, fit_util=util, tier=tier
    )
    assert np.all(decayed < plan.max_clock_mhz)


def test_decide_leaves_flex0_memory_bound_work_at_full_speed() -> None:
    """Through the whole tick, with limits that leave every GPU its demand: memory-bound work in
    Flex 0 runs at its top clock, the same work in Flex 1-3 is locked within its tolerance."""
    util, mem = memory_bound()
    fleet = FleetState.empty(TOPOLOGY)
    fleet.power_w = 0.4 * TOPOLOGY.gpu_max_cap_w
    fleet.util, fleet.mem_util = util, mem
    fleet.rack_last_seen_s[:] = 0.0
    tier = np.arange(N, dtype=np.int8) % N_TIERS
    decision, _ = decide(
        TOPOLOGY,
        fleet,
        tier=tier,
        limits=Limits(),
        settings=PolicySettings(),
        state=None,
        now_s=0.0,
    )
    top = np.array([GPU_MODELS[m].max_sm_clock_mhz for m in TOPOLOGY.gpu_model])
    clock = decision.sm_clock_max_mhz
    flex0 = tier == 0
    np.testing.assert_array_equal(clock[flex0], top[flex0])
    assert np.all(clock[~flex0] < top[~flex0])
    speed = (clock / top) ** ALPHA_MEMORY_BOUND
    floor = 1.0 - np.minimum(np.asarray(DEFAULT_FLEX_TOLERANCES)[tier], 0.02)
    assert np.all(speed >= floor - 1e-12)
    assert decision.dvfs_saving_w > 0.0


def test_a_cap_that_does_not_bind_leaves_every_model_at_its_max_clock() -> None:
    """Whatever the model, a compute-bound GPU whose cap its full-activity draw stays under gets
    no ceiling, also where the max clock lies off the grid counted from the min (a GB200's
    2062 MHz against 345 + 15 k): a ceiling there would slow it for nothing and read as a GPU
    held back by its ceiling to the demand estimate."""
    models = np.arange(len(GPU_MODELS), dtype=np.int8)
    off_grid = [
        m.name
        for m in GPU_MODELS
        if (m.max_sm_clock_mhz - m.min_sm_clock_mhz) % m.sm_clock_step_mhz
    ]
    assert off_grid, "no catalogued model has its max clock off the grid: the test is moot"
    topology = Topology.create(
        site="s",
        gpu_model=models,
        gpu_server=np.zeros(models.size, dtype=np.int32),
        levels=[_one_group(name) for name in ("server", "rack", "site")],
    )
    plan = CappingPlan.build(topology)
    n = topology.n_gpus
    clock, saving = clock_targets(
        plan,
        cap_w=topology.gpu_max_cap_w.copy(),
        util=np.ones(n),
        mem_util=np.full(n, 0.3),
        settings=DvfsSettings(fit_min_swing=0.0),
        fit_util=np.ones(n),
    )
    np.testing.assert_array_equal(clock, plan.max_clock_mhz)
    assert saving == 0.0


def _one_group(name: str) -> Level:
    """A level of one unlimited group."""
    return Level(
        name=name,
        ids=(name,),
        parent=np.zeros(1, dtype=np.int32),
        limit_w=np.full(1, np.inf),
        derating=np.ones(1),
        overhead_w=np.zeros(1),
    )
