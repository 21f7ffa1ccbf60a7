"""One tick's composition: the features around the decision core as stages over a shared `Tick`.

The daemon's tick and the simulator's closed loop run the same list of stages in the same order,
so a scenario exercises the daemon's real composition. A stage is a small object with four
hooks, each called once per tick in list order:

1. `observe(tick)`: read what was measured (site power, a meter reading) into the tick, e.g.
   the facility meter's power, on which demand-response baselines are taken;
2. `limits(tick)`: tighten the tick's site limit (wall power at the site's meter) or set
   per-GPU floors; a limit is only ever lowered, so every stage's limit holds;
3. `ceilings(tick)`: after the core decided, lower per-GPU caps (never raise them), e.g. the
   carbon plan's ceilings for flexible jobs;
4. `account(tick)`: count what the tick did (energy, emissions, cost).

Every phase runs over the whole list before the next phase begins, so a stage may read in
`limits` what an earlier or later stage put into the tick in `observe`.

Power at the meter and in contracts is *wall* power; the decision core budgets the PSUs' DC
side. `dc_w` is the one conversion, applied once by `core_limits` at the edge to the core.

Pure: numpy only, no clock reads, no I/O. Times are arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from policies.decision import Decision, Limits
from policies.errors import PolicyError
from policies.fleet import FleetState
from policies.topology import Topology

FloatArray = NDArray[np.float64]


def dc_w(wall_w: float, psu_efficiency: float) -> float:
    """Wall power (at a meter or in a contract) as the DC power the PSUs deliver. Units: W.

    A non-finite limit (no limit) stays what it is.
    """
    if not 0.5 < psu_efficiency <= 1.0:
        raise PolicyError(f"psu_efficiency must be in (0.5, 1], got {psu_efficiency}")
    return wall_w * psu_efficiency


def wall_w(dc_power_w: float, psu_efficiency: float) -> float:
    """The inverse of `dc_w`: DC-side power as drawn at the wall. Units: W."""
    if not 0.5 < psu_efficiency <= 1.0:
        raise PolicyError(f"psu_efficiency must be in (0.5, 1], got {psu_efficiency}")
    return dc_power_w / psu_efficiency


def dc_limits(limits: Limits, site_limit_wall_w: float, psu_efficiency: float) -> Limits:
    """`limits` with a wall-side site limit turned into the core's DC-side `site_limit_w`.

    An infinite wall limit keeps `limits.site_limit_w` (the topology's own site rating holds).
    """
    if not math.isfinite(site_limit_wall_w):
        return limits
    limit = dc_w(site_limit_wall_w, psu_efficiency)
    if limits.site_limit_w is not None:
        limit = min(limit, limits.site_limit_w)
    return replace(limits, site_limit_w=limit)


@dataclass(eq=False, kw_only=True)
class Tick:
    """What one control tick knows and what its stages have decided so far. Units: W, s.

    `now_s` is the wall clock (grid events, forecasts and jobs are stamped with it), `mono_s`
    the clock the core's rates run on. `site_power_w` is the racks' metered power (wall side);
    `metered_w` the site's meter, where contracts and demand response apply (the racks' sum
    unless a facility stage says otherwise). `site_limit_w` is the wall-side site limit stages
    tighten; `base` holds the rest of the core's limits. `ceiling_w` is None until a stage sets
    per-GPU cap ceilings (DC side, like caps).
    """

    now_s: float
    mono_s: float
    dt_s: float
    topology: Topology
    fleet: FleetState
    tier: NDArray[np.int8]
    psu_efficiency: float = 1.0
    #: How far ahead this tick's caps land (a decision period plus the actuation lag): stages
    #: may budget against limits announced for that span. Units: s.
    horizon_s: float = 0.0
    site_power_w: float = 0.0
    metered_w: float = math.nan
    site_limit_w: float = math.inf
    base: Limits = field(default_factory=Limits)
    gpu_floor_w: FloatArray | None = None
    stale_rack: NDArray[np.bool_] | None = None
    sync_job: NDArray[np.int32] | None = None
    #: The previous tick's decision until the core decides, then this tick's.
    decision: Decision | None = None
    ceiling_w: FloatArray | None = None

    def __post_init__(self) -> None:
        if math.isnan(self.metered_w):
            self.metered_w = self.site_power_w

    def tighten(self, limit_w: float) -> None:
        """Lower the wall-side site limit to `limit_w` (never raises it). Units: W."""
        self.site_limit_w = min(self.site_limit_w, limit_w)

    def cap_ceiling(self, ceiling_w: FloatArray) -> None:
        """Lower per-GPU cap ceilings to `ceiling_w` (never raises them). Units: W."""
        self.ceiling_w = (
            ceiling_w.copy() if self.ceiling_w is None else np.minimum(self.ceiling_w, ceiling_w)
        )

    def core_limits(self) -> Limits:
        """The limits the decision core takes: the site limit on the DC side, with floors."""
        limits = dc_limits(self.base, self.site_limit_w, self.psu_efficiency)
        return replace(limits, gpu_floor_w=self.gpu_floor_w)


class Stage(Protocol):
    """One feature around the decision core (see the module docstring)."""

    def observe(self, tick: Tick) -> None: ...

    def limits(self, tick: Tick) -> None: ...

    def ceilings(self, tick: Tick) -> None: ...

    def account(self, tick: Tick) -> None: ...


class Idle:
    """A stage that does nothing: subclass it and override only the hooks a feature needs."""

    def observe(self, tick: Tick) -> None:
        del tick

    def limits(self, tick: Tick) -> None:
        del tick

    def ceilings(self, tick: Tick) -> None:
        del tick

    def account(self, tick: Tick) -> None:
        del tick


def prepare(stages: Sequence[Stage], tick: Tick) -> Limits:
    """Before the core decides: every stage observes, then every stage tightens limits."""
    for stage in stages:
        stage.observe(tick)
    for stage in stages:
        stage.limits(tick)
    return tick.core_limits()


def finish(stages: Sequence[Stage], tick: Tick, decision: Decision) -> Decision:
    """After the core decided: ceilings lower its caps, then every stage accounts the tick."""
    tick.decision = decision
    for stage in stages:
        stage.ceilings(tick)
    if tick.ceiling_w is not None:
        decision = replace(decision, cap_w=np.minimum(decision.cap_w, tick.ceiling_w))
        tick.decision = decision
    for stage in stages:
        stage.account(tick)
    return decision


def compose(
    stages: Sequence[Stage], tick: Tick, decide: Callable[[Tick, Limits], Decision]
) -> Decision:
    """One whole tick: `prepare`, the core's `decide(tick, limits)`, `finish`."""
    return finish(stages, tick, decide(tick, prepare(stages, tick)))


def ordered(
    *,
    sources: Sequence[Stage] = (),
    jobs: Stage | None = None,
    grid: Stage | None = None,
    facility: Stage | None = None,
    carbon: Stage | None = None,
    accounts: Sequence[Stage] = (),
) -> list[Stage]:
    """The one order every composition runs its stages in, the daemon's and the simulator's.

    Measurement feeds (`sources`) first; then the scheduler's jobs; demand response before the
    facility, which turns the limit in force at the facility meter (contract or DR) into IT
    power; the carbon plan's ceilings after the core decided; accounting last.
    """
    chain = [*sources, jobs, grid, facility, carbon, *accounts]
    return [stage for stage in chain if stage is not None]
