"""Per-GPU work buffers a caller owns and lends to the decision core, tick after tick.

A fresh million-entry array costs its page faults on every tick (an order of magnitude more than
the arithmetic), so the stages of `policies.pipeline.decide` write their intermediates into
buffers that outlive the call. They belong to the caller, not to the decision state: the state
stays what the next tick needs (immutable, small, replayable), and the buffers are plain working
memory whose contents mean nothing between calls. One workspace serves one `decide` call at a
time; the daemon and the simulator keep one per fleet and hand it to every tick.

Each stage names the buffers it uses in a small frozen record (`DemandBuffers`, `FillBuffers`,
...). Stages run one after the other and none keeps its temporaries once it returns, so the
records share six float and three mask arrays: the table in `DecisionWorkspace.__init__` says
which names share memory. Two buffers carry a value from one stage to a later one and alias a
temporary only of the clock stage, which runs last: `raw_demand` (the estimate before the peak
hold) and `target_cap` (the allocation before smoothing). `tier_floor` has memory of its own.

Some inputs change far less often than telemetry (the tiers, the DVFS loss budget): what is
derived from them is cached here with a copy of what it was derived from, and dropped when the
workspace is handed a plan for a different topology.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from policies.errors import PolicyError
from policies.plan import CappingPlan

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class DemandBuffers:
    """The demand estimate's temporaries (`policies.demand.estimate_demand`)."""

    #: cap x pinned fraction, then the headroom floor (base + min headroom).
    threshold: FloatArray
    #: Reported clock plus one step (is the GPU at its ceiling?); then the base demand.
    reach: FloatArray
    base: FloatArray
    #: memory activity x memory-bound ratio; then the demand with headroom.
    bound: FloatArray
    headroom: FloatArray
    #: Per GPU, 1 + its headroom fraction (the pinned or the unpinned one).
    frac: FloatArray
    pinned: BoolArray
    #: At its clock ceiling; then "asks for more than it draws".
    at_ceiling: BoolArray
    asks: BoolArray
    #: Ceiling below the max clock; then compute-bound, then busy.
    below_max: BoolArray


@dataclass(frozen=True, slots=True)
class FillBuffers:
    """The water-fill's temporaries (`policies.capping.allocate`)."""

    #: demand - floor: each GPU's gain in its tier phase.
    tier_gain: FloatArray
    #: max - demand: each GPU's gain in the surplus phase, and what it was granted of it.
    surplus_gain: FloatArray
    surplus: FloatArray


@dataclass(frozen=True, slots=True)
class SmoothBuffers:
    """Ramp and deadband temporaries (`policies.smoothing.smooth`)."""

    #: Previous caps clamped into range; then the kept ones.
    previous: FloatArray
    #: previous + raise rate x dt; then |cap - previous|.
    ceiling: FloatArray
    #: min(target, ceiling): the rate-limited cap.
    limited: FloatArray
    #: How far the target is above the share of its tier floor a kept cap must reach.
    gap: FloatArray
    kept_cut: BoolArray
    small: BoolArray
    #: Raises onto a tier floor, issued however small.
    short: BoolArray


@dataclass(frozen=True, slots=True)
class ClockBuffers:
    """The clock stage's temporaries (`policies.dvfs.clock_targets`)."""

    activity: FloatArray
    #: memory activity x ratio; then the clock's cube of its fraction.
    ratio_w: FloatArray
    cube: FloatArray
    dynamic_w: FloatArray
    full_w: FloatArray
    fits: FloatArray
    #: Held minus current activity; then the lifted clock; then the clock fraction.
    swing: FloatArray
    memory_bound: BoolArray
    low_sm: BoolArray
    #: One Flex tier's GPUs, while bounding clock locks by each tier's tolerance.
    in_tier: BoolArray


@dataclass(frozen=True, slots=True)
class LendBuffers:
    """The lending stage's temporaries (`policies.lending.lend_step`): its own memory, since
    the allocation it runs uses the shared buffers while `reach` is its demand and ceiling."""

    margin: FloatArray
    reach: FloatArray
    wanted: FloatArray
    headroom: FloatArray
    rise: FloatArray
    keep: BoolArray
    free: BoolArray
    #: The tier floors as sized, before a synchronous job's pacing lowered its members' to its
    #: pace: lent power brings GPUs to them first.
    tier_floor: FloatArray


class DecisionWorkspace:
    """Working memory for `decide` on a fleet of `n_gpus` GPUs (see the module)."""

    def __init__(self, n_gpus: int) -> None:
        self.n_gpus = n_gpus
        f = [np.empty(n_gpus) for _ in range(6)]
        m = [np.empty(n_gpus, dtype=np.bool_) for _ in range(3)]
        # Which stage names share which memory. Within a stage, names on one array are used one
        # after the other (the first is dead when the second is written).
        #             f[0]       f[1]          f[2]      f[3]       f[4]        f[5]
        # demand      threshold  reach, base   bound, headroom                  frac
        # floors      modelled_draw  floor_basis  floor_scratch  floor_extra
        # fill        tier_gain  surplus_gain  surplus
        # smoothing   previous   ceiling       limited                          gap
        # clocks      activity   ratio_w, cube dynamic_w full_w     fits        swing
        # carried                                        target_cap raw_demand
        #             m[0]             m[1]                m[2]
        # demand      pinned           at_ceiling, asks    below_max
        # floors      (demand's pinned)                    floor_mask
        # smoothing   kept_cut         small               short
        # clocks      memory_bound     low_sm              in_tier
        self.demand = DemandBuffers(
            threshold=f[0],
            reach=f[1],
            base=f[1],
            bound=f[2],
            headroom=f[2],
            frac=f[5],
            pinned=m[0],
            at_ceiling=m[1],
            asks=m[1],
            below_max=m[2],
        )
        #: The tier-floor stage's model draw (idle + dynamic range x held activity).
        self.modelled_draw = f[0]
        #: The uncapped draw the tier floors are sized for (`policies.floors.tier_floor_caps`).
        self.floor_basis = f[1]
        self.floor_scratch = f[2]
        #: The floors' divisor and clock terms: free until the fill writes `target_cap`.
        self.floor_extra = f[3]
        #: Where the floors keep the raw demand (read with the demand stage's `pinned`).
        self.floor_mask = m[2]
        self.fill = FillBuffers(tier_gain=f[0], surplus_gain=f[1], surplus=f[2])
        self.smoothing = SmoothBuffers(
            previous=f[0],
            ceiling=f[1],
            limited=f[2],
            gap=f[5],
            kept_cut=m[0],
            small=m[1],
            short=m[2],
        )
        self.clocks = ClockBuffers(
            activity=f[0],
            ratio_w=f[1],
            cube=f[1],
            dynamic_w=f[2],
            full_w=f[3],
            fits=f[4],
            swing=f[5],
            memory_bound=m[0],
            low_sm=m[1],
            in_tier=m[2],
        )
        #: The allocation's caps before smoothing (warm ticks; smoothing makes the fresh caps).
        self.target_cap = f[3]
        #: The demand estimate before the peak hold (the hold makes the fresh demand).
        self.raw_demand = f[4]
        #: Each GPU's tier floor: read by the allocation, raised by the pacing step.
        self.tier_floor = np.empty(n_gpus)
        self._pool: list[NDArray[np.generic]] = [*f, *m, self.tier_floor]
        self._plan: CappingPlan | None = None
        self._tier_keep: dict[tuple[float, ...], tuple[FloatArray, FloatArray, NDArray[np.int8]]]
        self._tier_keep = {}
        self._phase_key: NDArray[np.int64] | None = None
        self._phase_tier: NDArray[np.int8] | None = None
        self._lowest_clock: dict[float, FloatArray] = {}
        self._tier_lowest: FloatArray | None = None
        self._lend: LendBuffers | None = None

    @classmethod
    def sized(cls, workspace: DecisionWorkspace | None, n_gpus: int) -> DecisionWorkspace:
        """`workspace` if it is for `n_gpus` GPUs, else a new one (the fleet was resized)."""
        if workspace is not None and workspace.n_gpus == n_gpus:
            return workspace
        return cls(n_gpus)

    def serve(self, plan: CappingPlan) -> None:
        """Prepare to work for `plan`: what was cached for another plan is dropped."""
        if plan.topology.n_gpus != self.n_gpus:
            raise PolicyError(
                f"workspace is for {self.n_gpus} GPUs, the topology has {plan.topology.n_gpus}"
            )
        # What is cached derives from the topology alone, so a plan that differs only in its
        # overheads (measured non-GPU power, a new one every tick) keeps it.
        if self._plan is None or plan.topology is not self._plan.topology:
            self._plan = plan
            self._tier_keep.clear()
            self._lowest_clock.clear()
            self._phase_key = self._phase_tier = None

    def tier_keep(
        self, plan: CappingPlan, tier: NDArray[np.int8], tolerances: tuple[float, ...]
    ) -> tuple[FloatArray, FloatArray, bool]:
        """Buffers for the tier-floor factors of `tolerances`, and whether they hold them for
        `tier` already (else the caller fills them; the tiers are recorded as seen)."""
        self.serve(plan)
        entry = self._tier_keep.get(tolerances)
        if entry is None:
            n = self.n_gpus
            entry = (np.empty(n), np.empty(n), np.empty(n, dtype=np.int8))
            self._tier_keep[tolerances] = entry
            fresh = False
        else:
            fresh = bool(np.array_equal(tier, entry[2]))
        if not fresh:
            np.copyto(entry[2], tier)
        return entry[0], entry[1], fresh

    def phase_keys(self, plan: CappingPlan, tier: NDArray[np.int8]) -> NDArray[np.int64]:
        """Each GPU's row in the fill's (server, phase) table: server x phases + tier.

        Reused while the tiers compare equal to those they were made for.
        """
        self.serve(plan)
        if self._phase_key is None or self._phase_tier is None:
            self._phase_key = np.empty(self.n_gpus, dtype=np.int64)
            self._phase_tier = np.empty(self.n_gpus, dtype=np.int8)
        elif np.array_equal(tier, self._phase_tier):
            return self._phase_key
        np.add(plan.phase_key, tier, out=self._phase_key)
        np.copyto(self._phase_tier, tier)
        return self._phase_key

    def surplus_keys(self, plan: CappingPlan, surplus_phase: int) -> NDArray[np.int64]:
        """The phase-key buffer rewritten to every GPU's surplus row; the tier keys are gone."""
        key, seen = self._phase_key, self._phase_tier
        if key is None or seen is None:
            raise ValueError("surplus keys are only asked for after the tier keys")
        np.add(plan.phase_key, surplus_phase, out=key)
        seen.fill(-1)  # no tier is -1: the next tier keys are rebuilt
        return key

    def lowest_clock(self, plan: CappingPlan, keep_frac: float) -> tuple[FloatArray, bool]:
        """A buffer for the per-GPU lowest clock at `keep_frac`, and whether it holds it."""
        self.serve(plan)
        buf = self._lowest_clock.get(keep_frac)
        if buf is not None:
            return buf, True
        buf = self._lowest_clock[keep_frac] = np.empty(self.n_gpus)
        return buf, False

    def tier_lowest(self) -> FloatArray:
        """A buffer for per-GPU lowest clocks bounded by each tier's tolerance (made on first use:
        only fleets with a tier that tolerates less than the loss budget need it)."""
        if self._tier_lowest is None:
            self._tier_lowest = np.empty(self.n_gpus)
        return self._tier_lowest

    def lend(self) -> LendBuffers:
        """The lending stage's buffers (made on first use: only fleets that lend need them)."""
        if self._lend is None:
            n = self.n_gpus
            self._lend = LendBuffers(
                margin=np.empty(n),
                reach=np.empty(n),
                wanted=np.empty(n),
                headroom=np.empty(n),
                rise=np.empty(n),
                keep=np.empty(n, dtype=np.bool_),
                free=np.empty(n, dtype=np.bool_),
                tier_floor=np.empty(n),
            )
        return self._lend

    @property
    def nbytes(self) -> int:
        """Working memory held (the warm path's cost besides the state). Units: bytes."""
        arrays: list[NDArray[np.generic]] = [*self._pool, *self._lowest_clock.values()]
        if self._tier_lowest is not None:
            arrays.append(self._tier_lowest)
        if self._lend is not None:
            lend = self._lend
            arrays += [lend.margin, lend.reach, lend.wanted, lend.headroom, lend.rise]
            arrays += [lend.keep, lend.free]
        for entry in self._tier_keep.values():
            arrays += entry
        if self._phase_key is not None and self._phase_tier is not None:
            arrays += [self._phase_key, self._phase_tier]
        return sum(int(a.nbytes) for a in arrays)
