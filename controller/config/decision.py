"""The decision core's settings as the policy file and snapshots carry them: `capping`, `ramp`
and `dvfs`, bounded once here and turned into `policies.decision.PolicySettings`."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Self

from pydantic import Field, model_validator

from controller.config.base import FiniteSection, Fraction, PositiveW, Section
from policies.decision import (
    CappingSettings,
    DvfsSettings,
    LendSettings,
    NonGpuSettings,
    PolicySettings,
)
from policies.tiers import DEFAULT_FLEX_TOLERANCES

#: A workload class as telemetry names it (`agent.config.AgentConfig.workload_class`).
ClassName = Annotated[str, Field(min_length=1, max_length=64)]


class LendSection(FiniteSection):
    """Headroom lending (`policies.lending`): power GPUs are allowed but do not draw (idle min
    caps, inference headroom, communication phases) lent to GPUs their caps hold back, revoked
    at the first rise. Off unless enabled.
    """

    enabled: bool = False
    """Lend undrawn cap headroom to capped GPUs."""
    contract_tolerance_frac: Annotated[float, Field(ge=0, le=0.2)] = 0.02
    """How far the sum of caps may exceed the usable site limit: the worst case, were every GPU
    to jump to its cap at once, for at most `reaction_s`.
    """
    reaction_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    """The controller's worst-case reaction time (decision period, telemetry delay, cap
    actuation): breakers must carry the worst case this long within a tenth of their trip
    curve. Units: s.
    """
    margin_frac: Annotated[float, Field(ge=0, le=1)] = 0.02
    """Margin kept over a lender's held draw, as a fraction of it; a draw that outruns it
    revokes the GPU's lending.
    """
    margin_w: Annotated[float, Field(ge=0)] = 5.0
    """The least such margin. Units: W."""
    hold_s: Annotated[float, Field(ge=0)] = 10.0
    """Time constant of the peak-held draw a lender's headroom is reckoned from; 0 uses the
    last draw alone. Units: s.
    """
    lender_classes: Annotated[tuple[ClassName, ...], Field(max_length=64)] | None = None
    """Workload classes (as telemetry names them) whose GPUs may lend; absent: every GPU.
    `[idle]` lends only what GPUs no job holds leave under their min caps: their draw rises only
    when a job is placed on them, so the worst case above is reached that rarely, where a
    service's headroom is taken back at every burst.
    """

    def settings(self) -> LendSettings:
        """The decision core's lending settings (`policies.decision.LendSettings`)."""
        return LendSettings(**self.model_dump())


class NonGpuSection(FiniteSection):
    """Servers' non-GPU power (CPUs, fans, NICs) budgeted as each rack's meter measures it
    (`policies.non_gpu`) rather than at the topology's peak. Off unless enabled: it needs every
    rack to report its metered wall power (a rack meter, or a node meter on every node) and
    `limits.psu_efficiency` set; a rack that reports only its GPUs' sum is budgeted at its peak.
    """

    measured: bool = False
    """Budget each rack's non-GPU power as measured (rack power x PSU efficiency less its GPUs'
    power), held and with a margin, never above the peak; stale racks at the peak.
    """
    margin_frac: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Margin over the held measurement, as a fraction of the rack's peak non-GPU power: the
    rise it may see before the controller reacts.
    """
    hold_s: Annotated[float, Field(ge=0)] = 60.0
    """Time constant of the peak-held measurement (a rise counts at once, a fall this slowly);
    0 uses the last measurement alone. Units: s.
    """

    def settings(self, psu_efficiency: float = 1.0) -> NonGpuSettings:
        """The decision core's settings; `psu_efficiency` is `limits.psu_efficiency`."""
        return NonGpuSettings(**self.model_dump(), psu_efficiency=psu_efficiency)


class CappingSection(FiniteSection):
    deadband_w: Annotated[float, Field(ge=0)] = 10.0
    """Cap changes smaller than this are not sent, so caps do not chatter. Units: W."""
    raise_rate_w_per_s: PositiveW = 200.0
    """How fast one GPU's cap may rise; lowering is immediate. Units: W/s."""
    demand_headroom_frac: Annotated[float, Field(ge=0, le=1)] = 0.10
    """Headroom granted over a GPU's recent draw, so a capped GPU's rising demand becomes
    visible.
    """
    demand_headroom_min_w: Annotated[float, Field(ge=0)] = 20.0
    """The least such headroom. Units: W."""
    unpinned_headroom_frac: Annotated[float, Field(ge=0, le=1)] = 0.05
    """Headroom over the draw of a busy GPU drawing below its cap: enough for a rise to pin it
    (more than 1 - `pinned_frac`); under a binding limit, headroom not drawn is power lost.
    """
    unpinned_headroom_min_w: Annotated[float, Field(ge=0)] = 5.0
    """The least such headroom. Units: W."""
    pinned_frac: Annotated[float, Field(gt=0, le=1)] = 0.97
    """A GPU drawing within this fraction of its cap is treated as pinned (it wants more)."""
    demand_hold_s: Annotated[float, Field(ge=0)] = 3.0
    """Time constant of the demand peak-hold, so a synchronous job's communication dips do not
    hand its power away; 0 disables it. Units: s.
    """
    floor_hold_s: Annotated[float, Field(ge=0)] = 1800.0
    """Time constant of the uncapped draw a synchronous job's tier floors are sized for, so a
    checkpoint or an all-reduce keeps the floor of the compute after it; 0 disables it. Units: s.
    """
    site_margin_frac: Annotated[float, Field(ge=0, lt=0.5)] = 0.002
    """Share of the site limit kept free for surges the caps cannot stop (a GPU's limiter takes
    about 0.1 s).
    """
    flex_tolerances: tuple[Fraction, Fraction, Fraction, Fraction] = DEFAULT_FLEX_TOLERANCES
    """Slowdown each Flex tier tolerates, Flex 0 to 3 (fractions in [0, 1), not falling with the
    tier). Every GPU is first kept at the cap where the policy's model puts its speed at
    (1 - tolerance) of uncapped, Flex 0 first; the rest goes in strict tier order. All zeros is
    plain strict tiers.
    """

    lend: LendSection = LendSection()
    """Headroom lending (opt-in): undrawn cap headroom lent to capped GPUs."""
    non_gpu: NonGpuSection = NonGpuSection()
    """Non-GPU power budgeted as measured per rack rather than at its peak (opt-in)."""

    @model_validator(mode="after")
    def _tolerances_rise(self) -> Self:
        t = self.flex_tolerances
        if any(b < a for a, b in pairwise(t)):
            raise ValueError("flex_tolerances must not fall from Flex 0 to Flex 3")
        return self


class RampSection(FiniteSection):
    """Limits on how fast the allowed site power moves (W/s); unset means unlimited."""

    site_up_w_per_s: PositiveW | None = None
    """Fastest rise of the allowed site power; unset: unlimited. Units: W/s."""
    site_down_w_per_s: PositiveW | None = None
    """Fastest fall of the allowed site power; unset: unlimited. Units: W/s."""


class DvfsSection(FiniteSection):
    enabled: bool = True
    """Set SM-clock ceilings as well as power caps."""
    max_loss_frac: Annotated[float, Field(ge=0, lt=1)] = 0.02
    """Throughput a memory-bound GPU may lose to its clock ceiling."""
    memory_bound_ratio: Annotated[float, Field(gt=0)] = 0.6
    """SM activity over memory activity below which work is treated as memory-bound."""
    fit_compute_bound: bool = True
    """Also lock compute-bound GPUs under a binding cap to the clock whose power fits the cap."""
    activity_hold_s: Annotated[float, Field(ge=0)] = 10.0
    """Time constant of the peak-held SM activity the cap-fitting clock is sized for. Units: s."""
    fit_min_swing: Annotated[float, Field(ge=0, le=1)] = 0.05
    """The cap-fitting clock applies only where held activity exceeds the current one by this
    much; 0 fits everywhere.
    """


class DecisionSettingsSection(Section):
    """The decision core's settings, bounded once for every file that carries them: the policy
    file's `capping`, `ramp` and `dvfs` sections, and a snapshot's `settings` (`rheostat decide`).
    """

    capping: CappingSection = CappingSection()
    """How power caps move (the policy file's `capping`)."""
    ramp: RampSection = RampSection()
    """Limits on how fast the allowed site power moves (the policy file's `ramp`)."""
    dvfs: DvfsSection = DvfsSection()
    """SM-clock ceilings (the policy file's `dvfs`)."""

    def policy_settings(self, psu_efficiency: float = 1.0) -> PolicySettings:
        """The decision core's settings (`policies.decision.PolicySettings`); `psu_efficiency`
        turns racks' metered wall power DC-side for the measured non-GPU power (1.0 where the
        file carrying these settings has none: PSU losses then count as non-GPU, budgeting
        more, never less, than is drawn)."""
        capping = CappingSettings(
            deadband_w=self.capping.deadband_w,
            raise_rate_w_per_s=self.capping.raise_rate_w_per_s,
            demand_headroom_frac=self.capping.demand_headroom_frac,
            demand_headroom_min_w=self.capping.demand_headroom_min_w,
            unpinned_headroom_frac=self.capping.unpinned_headroom_frac,
            unpinned_headroom_min_w=self.capping.unpinned_headroom_min_w,
            pinned_frac=self.capping.pinned_frac,
            demand_hold_s=self.capping.demand_hold_s,
            floor_hold_s=self.capping.floor_hold_s,
            site_margin_frac=self.capping.site_margin_frac,
            flex_tolerances=self.capping.flex_tolerances,
            lend=self.capping.lend.settings(),
            non_gpu=self.capping.non_gpu.settings(psu_efficiency),
            site_ramp_up_w_per_s=self.ramp.site_up_w_per_s,
            site_ramp_down_w_per_s=self.ramp.site_down_w_per_s,
        )
        dvfs = DvfsSettings(
            enabled=self.dvfs.enabled,
            max_loss_frac=self.dvfs.max_loss_frac,
            memory_bound_ratio=self.dvfs.memory_bound_ratio,
            fit_compute_bound=self.dvfs.fit_compute_bound,
            activity_hold_s=self.dvfs.activity_hold_s,
            fit_min_swing=self.dvfs.fit_min_swing,
        )
        return PolicySettings(capping=capping, dvfs=dvfs)
