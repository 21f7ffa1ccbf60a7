"""The decision core's inputs and outputs, shared by the daemon, the simulator and the benchmarks.

`policies.pipeline.decide` maps (topology, fleet snapshot, tiers, limits, settings, previous state,
now) to a `Decision` and the next `DecisionState`. The state is explicit so a decision can be
replayed from recorded inputs, and so the warm path can reuse the previous tick's work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.plan import CappingPlan
from policies.tiers import DEFAULT_FLEX_TOLERANCES

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class LendSettings:
    """Headroom lending (`policies.lending`); off unless enabled. Units: W, s, fractions."""

    enabled: bool = False
    #: How far the sum of caps may exceed the usable site limit: the worst case if every GPU
    #: jumped to its cap at once, for at most `reaction_s`.
    contract_tolerance_frac: float = 0.02
    #: The controller's worst-case reaction time: a decision period, telemetry delay and cap
    #: actuation. Breakers must carry the worst case this long within `TRIP_SHARE` of their
    #: trip curve (`policies.lending.TRIP_SHARE`). Units: s.
    reaction_s: float = 5.0
    #: Margin kept over a lender's held draw, as a fraction of it and at least `margin_w`; a draw
    #: that outruns it revokes the GPU's lending.
    margin_frac: float = 0.02
    margin_w: float = 5.0
    #: Time constant of the peak-held draw a lender's headroom is reckoned from. Units: s.
    hold_s: float = 10.0
    #: Workload classes whose GPUs may lend (None: every GPU). The core never sees class
    #: names: its caller turns these into `decide`'s `lender` mask (`policies.lending.lenders`).
    lender_classes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NonGpuSettings:
    """Servers' non-GPU power budgeted as measured (`policies.non_gpu`); off unless enabled.

    Off, every group's non-GPU power (CPUs, fans, NICs: `Level.overhead_w`) is budgeted at its
    peak, which is safe whatever the load but leaves what a lightly loaded server does not draw
    unused. On, each rack's is its metered power less its GPUs', held and with a margin, never
    above the peak. Units: W, s, fractions.
    """

    measured: bool = False
    #: Margin over the held measurement, as a fraction of the rack's peak non-GPU power: the
    #: rise it may see before the controller reacts (a decision period, telemetry, actuation).
    margin_frac: float = 0.05
    #: Time constant of the peak-held measurement: a rise counts at once, a fall this slowly, so
    #: a synchronous job's communication phase does not hand out what its compute phase draws.
    #: Units: s.
    hold_s: float = 60.0
    #: Share of a rack's metered (wall-side) power its PSUs deliver: the factor the ratings were
    #: scaled by (`policies.topology.dc_side`). Set by the caller from the same figure; 1.0
    #: counts PSU losses as non-GPU power, which budgets more than is drawn (safe).
    psu_efficiency: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CappingSettings:
    """How caps move. Units: W and W/s."""

    #: Changes smaller than this are not issued (no chatter).
    deadband_w: float = 10.0
    #: Per-GPU cap raise rate; lowering is immediate.
    raise_rate_w_per_s: float = 200.0
    #: Demand headroom over the cap of a GPU pinned at it, so a capped GPU's rising demand
    #: becomes visible and it climbs fast while power is free.
    demand_headroom_frac: float = 0.10
    demand_headroom_min_w: float = 20.0
    #: Headroom over the draw of a busy GPU its cap does not hold back: its demand is known, so
    #: it needs only enough for a rise to pin it on the next tick (more than 1 - `pinned_frac`).
    #: Under a binding limit, headroom a GPU does not draw is power no tier below can use.
    unpinned_headroom_frac: float = 0.05
    unpinned_headroom_min_w: float = 5.0
    #: A GPU drawing within this fraction of its cap is treated as pinned (wants more).
    pinned_frac: float = 0.97
    #: Time constant of the demand peak-hold: a GPU's demand falls back toward its draw no faster
    #: than this, so a synchronous job's communication dips (0.2-3 Hz, arXiv 2508.14318) do not
    #: hand its power to lower tiers only for it to claw it back at the raise rate on the next
    #: compute phase. 0 disables the hold. Units: s.
    demand_hold_s: float = 3.0
    #: Optional limit on how fast the allowed site power moves between ticks (None = unlimited).
    site_ramp_up_w_per_s: float | None = None
    site_ramp_down_w_per_s: float | None = None
    #: Share of the site limit kept free for transients the caps cannot stop: a GPU's own power
    #: limiter takes ~0.1 s to pull a surge (a synchronous job's compute phase resuming) back under
    #: its cap, and every GPU surges at once. Applied below the hard site figure only. The default
    #: is a revenue meter's accuracy class (0.2 %): on a site-wide synchronous job at 0.5 Hz it
    #: took the `training-swings` scenario from 81 s to 5.5 s over its contract in 900 s.
    site_margin_frac: float = 0.002
    #: Slowdown each Flex tier tolerates (Flex 0 to 3, fractions in [0, 1), not falling with the
    #: tier). The allocation first keeps every GPU at its tier floor, the cap at which the policy's
    #: power model puts its speed at (1 - tolerance) of its uncapped speed, Flex 0 first, and only
    #: then shares the rest in strict tier order. All zeros is plain strict tiers.
    flex_tolerances: tuple[float, float, float, float] = DEFAULT_FLEX_TOLERANCES
    #: Time constant of the uncapped draw a synchronous job's tier floors are sized for: it rises
    #: at once and falls no faster than this, so a quiet phase (an all-reduce, a checkpoint of a
    #: minute or more) keeps the floor of the compute that follows it. Sized from the held
    #: demand (seconds), the floor would be gone when compute resumes, and the job would run
    #: below it for the telemetry delay and the actuation lag, while whoever took the power
    #: gives it back. Services (no synchronous job) follow their draw. 0 disables it. Units: s.
    floor_hold_s: float = 1800.0
    #: Headroom lending: power GPUs are allowed but do not draw, lent to capped ones (opt-in).
    lend: LendSettings = LendSettings()
    #: Non-GPU power budgeted as measured rather than at its peak (opt-in).
    non_gpu: NonGpuSettings = NonGpuSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class DvfsSettings:
    """SM-clock targets. `max_loss_frac` is the throughput a memory-bound GPU may lose to them."""

    enabled: bool = True
    max_loss_frac: float = 0.02
    #: SM activity over memory activity below which work is treated as memory-bound.
    memory_bound_ratio: float = 0.6
    #: Also lock compute-bound GPUs under a binding cap to the clock whose power fits the cap.
    fit_compute_bound: bool = True
    #: Time constant of the peak-held SM activity the cap-fitting clock is sized for, so a
    #: synchronous job's compute phase resumes under a ceiling that already fits. Units: s.
    activity_hold_s: float = 10.0
    #: The cap-fitting clock applies only where the held activity exceeds the current one by at
    #: least this much (a quiet phase a surge can follow): in steady state the GPU's own limiter
    #: holds the cap at no throughput cost, while a fitted clock sized for the held activity
    #: runs a GPU whose activity merely jitters below its cap. 0 fits everywhere.
    fit_min_swing: float = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicySettings:
    capping: CappingSettings = CappingSettings()
    dvfs: DvfsSettings = DvfsSettings()


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits for this tick on top of the topology's static ratings. Units: W.

    `site_limit_w` is the lowest of the contract, any demand-response target and the facility-
    derived IT budget, computed by the caller; None keeps the topology's site rating.
    """

    site_limit_w: float | None = None
    #: A softer site target (e.g. a demand-response level) that the allowed site power follows
    #: within the ramp-rate settings; `site_limit_w` stays hard and is never exceeded.
    site_target_w: float | None = None
    #: Per-GPU power below which its Flex tier's tolerated slowdown is exceeded (from
    #: `policies.dr.flex.gpu_floor_w` during a demand-response event; None otherwise). An
    #: allocation that honours it cuts every GPU to its floor, most tolerant tier first, before
    #: any GPU goes below its floor. Units: W.
    gpu_floor_w: FloatArray | None = None


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class Decision:
    """Per-GPU caps and clock ceilings, plus per-group figures for metrics and operators.

    Per-level tuples are indexed like `Topology.levels`. `budget_w` is the power the allocation
    grants each group (GPU caps plus overhead), `limit_w` the usable limit it was held to, and
    `infeasible` marks groups whose limit even min caps cannot meet (min caps are then applied).
    """

    cap_w: FloatArray
    sm_clock_max_mhz: FloatArray
    demand_w: FloatArray
    tier: NDArray[np.int8]
    budget_w: tuple[FloatArray, ...]
    limit_w: tuple[FloatArray, ...]
    infeasible: tuple[NDArray[np.bool_], ...]
    site_allowed_w: float
    #: Estimated power clock targets save against running at the cap. Units: W.
    dvfs_saving_w: float
    #: Peak-held SM activity per GPU, what the tier floors were sized for: a stage lowering
    #: caps after the core (the carbon plan) sizes the same floors from it. None: unknown.
    activity_held: FloatArray | None = None


@dataclass(frozen=True, slots=True, eq=False, kw_only=True)
class DecisionState:
    """What the next tick needs from this one: last issued caps, its time, the ramped site power."""

    cap_w: FloatArray
    now_s: float
    site_allowed_w: float
    #: Peak-held SM activity for the cap-fitting clock (held like demand); None before a tick.
    util_held: FloatArray | None = None
    #: Clock ceilings issued last tick: a GPU running at its ceiling is held back by it.
    sm_clock_max_mhz: FloatArray | None = None
    #: Held per-GPU demand (see `CappingSettings.demand_hold_s`); None before the first tick.
    demand_w: FloatArray | None = None
    #: Topology-derived index arrays, rebuilt only when the topology object changes.
    plan: CappingPlan | None = None
    #: Peak-held draw each GPU's lendable headroom is reckoned from (`policies.lending`); None
    #: while lending is off or before its first tick. Units: W.
    lend_basis_w: FloatArray | None = None
    #: Held uncapped draw each synchronous job's GPU has its tier floor sized for
    #: (`CappingSettings.floor_hold_s`); None without synchronous jobs or before a tick. Units: W.
    floor_basis_w: FloatArray | None = None
    #: Per rack, the peak-held non-GPU power measured (`policies.non_gpu`); None while that is
    #: off or before its first tick. Units: W (DC side).
    non_gpu_w: FloatArray | None = None

    @property
    def nbytes(self) -> int:
        """Memory this state keeps between ticks (the warm path's cost). Units: bytes.

        Per-GPU arrays may be rows of one block allocated per tick; the whole block is kept
        alive by any of them, so blocks are counted whole, once.
        """
        arrays = (
            self.cap_w,
            self.demand_w,
            self.util_held,
            self.sm_clock_max_mhz,
            self.lend_basis_w,
            self.floor_basis_w,
            self.non_gpu_w,
        )
        owners = {id(o): o for o in (_owner(a) for a in arrays if a is not None)}
        held = sum(int(o.nbytes) for o in owners.values())
        return held + (self.plan.nbytes if self.plan is not None else 0)


def _owner(array: NDArray[np.generic]) -> NDArray[np.generic]:
    """The array that owns `array`'s memory (itself unless it is a view)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array
