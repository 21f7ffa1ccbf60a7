"""The daemon's features as tick stages, and the one function that builds their list.

Each stage here adapts a hook that owns a feature's I/O (topics, files, metrics) to
`policies.stages.Stage`; the algorithms are the decision core's. `build_stages` orders them
with `policies.stages.ordered`, the order the simulator's closed loop runs its own in.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.carbon import CarbonHook
from controller.facility import FacilityHook
from controller.grid.hook import GridHook, GridStage
from controller.jobs import SyncJobs
from policies.stages import Idle, Stage, Tick, ordered


class JobsStage(Idle):
    """The scheduler's synchronous jobs: the core paces each one's GPUs to its slowest."""

    def __init__(self, jobs: SyncJobs) -> None:
        self.jobs = jobs

    def observe(self, tick: Tick) -> None:
        tick.sync_job = self.jobs.sync_job()


class CarbonStage(Idle):
    """Flexible jobs follow the grid signal: their caps only ever go lower than allowed."""

    def __init__(self, hook: CarbonHook) -> None:
        self.hook = hook

    def ceilings(self, tick: Tick) -> None:
        ceiling = self.hook.ceilings(tick.now_s)
        if ceiling is not None:
            tick.cap_ceiling(ceiling)


class FacilityAccount(Idle):
    """Facility energy, emissions and cost per tier, counted after each tick."""

    def __init__(self, hook: FacilityHook) -> None:
        self.hook = hook

    def account(self, tick: Tick) -> None:
        self.hook.account(
            now_s=tick.now_s,
            dt_s=tick.dt_s,
            it_power_w=tick.site_power_w,
            gpu_power_w=tick.fleet.power_w,
            tier=tick.tier,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Hooks:
    """The daemon's feature hooks (None: the feature is off)."""

    jobs: SyncJobs
    grid: GridHook | None = None
    facility: FacilityHook | None = None
    carbon: CarbonHook | None = None


def build_stages(hooks: Hooks) -> list[Stage]:
    """The tick's stages for these hooks, in the order the simulator runs them too."""
    facility = hooks.facility
    return ordered(
        jobs=JobsStage(hooks.jobs),
        grid=None if hooks.grid is None else GridStage(hooks.grid),
        facility=None if facility is None else facility.stage,
        carbon=None if hooks.carbon is None else CarbonStage(hooks.carbon),
        accounts=() if facility is None else (FacilityAccount(facility),),
    )
