"""Carbon-aware flexible work in the closed loop, and its carbon-blind twin for comparison.

`CarbonShifter` wraps a controller: after the decision core has set caps inside every limit, it
lowers the caps of Flex 2-3 training jobs to the speed `policies.carbon` plans for this slot
(only ever lower, so every limit still holds). Each job owes a daily amount of work: a fraction
of what it would do at full speed between t = 0 (or its start) and its deadline (its end, or the
run's). Progress is read from the job's measured work (a scheduler reports it), and the plan is
redone every slot. The forecast is the day's signal itself (a day-ahead marginal-emissions
forecast, assumed exact).

The blind twin is the same scenario with `carbon_policy.signal_aware` false: the same policy
sees a flat signal, so it spreads the same daily work evenly. `co2_reduction_vs_blind` compares
the two runs' facility emissions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.carbon import CarbonSettings, job_speed_now, track_power_frac
from policies.decision import Limits
from policies.fleet import FleetState

if TYPE_CHECKING:
    from simulator.cluster import SimCluster
    from simulator.controllers import Actuation, Controller
    from simulator.loop import RunResult
    from simulator.scenario import Scenario

FloatArray = NDArray[np.float64]


class CarbonPolicySpec(BaseModel):
    """Carbon-aware budgets for flexible work (needs `grid.carbon`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signal_aware: bool = Field(
        default=True, description="false = the carbon-blind twin (flat signal)"
    )
    shift_tiers: tuple[int, ...] = (2, 3)
    work_target_frac: tuple[float, float, float, float] = Field(
        (1.0, 1.0, 0.85, 0.7),
        description="per tier, daily work owed as a fraction of running flat out all day",
    )
    tolerances: tuple[float, float, float, float] = (0.0, 0.10, 0.25, 0.50)
    slot_s: float = Field(300.0, gt=0, description="re-planning period (the trace's 5 minutes)")
    track_s: float = Field(60.0, gt=0, description="how often caps are steered onto the plan")

    @model_validator(mode="after")
    def _valid(self) -> CarbonPolicySpec:
        if any(not 0 < f <= 1 for f in self.work_target_frac):
            raise ValueError("work_target_frac entries must lie in (0, 1]")
        CarbonSettings(shift_tiers=self.shift_tiers, tolerances=self.tolerances)
        return self


class CarbonShifter:
    """A controller whose Flex 2-3 training caps follow the carbon plan. Units: W, s."""

    def __init__(self, inner: Controller, cluster: SimCluster, scenario: Scenario) -> None:
        from simulator.rates import carbon_per_tick  # noqa: PLC0415

        spec = scenario.carbon_policy
        if spec is None:
            raise ValueError("scenario has no carbon_policy")
        self.name = inner.name
        self.inner = inner
        self.spec = spec
        self.settings = CarbonSettings(shift_tiers=spec.shift_tiers, tolerances=spec.tolerances)
        self.cluster = cluster
        n_slots = int(np.ceil(scenario.duration_s / spec.slot_s))
        per_slot = carbon_per_tick(n_slots, spec.slot_s, start_s=scenario.grid.carbon_start_s)
        self.signal = per_slot if spec.signal_aware else np.ones(n_slots)
        wl = cluster.workloads
        self.jobs = [(k, job) for k, job in enumerate(wl.training) if job.tier in spec.shift_tiers]
        self.deadline_s = [min(job.end_s, scenario.duration_s) for _, job in self.jobs]
        self.begin_s = [max(job.start_s, 0.0) for _, job in self.jobs]
        # Planned against a target a little above the one owed, so rounding and measurement
        # noise at the end of the day never leave a job short.
        self.target_s = [
            spec.work_target_frac[job.tier]
            * max(end - begin, 0.0)
            * (1.0 + self.settings.target_margin_frac)
            for (_, job), begin, end in zip(self.jobs, self.begin_s, self.deadline_s, strict=True)
        ]
        self.work_at_zero = np.zeros(len(self.jobs))
        self.started = False
        self.slot = -1
        topo = cluster.topology
        self.max_cap_w = topo.gpu_max_cap_w
        self.min_cap_w = topo.gpu_min_cap_w
        self.rows = [slice(job.start_gpu, job.start_gpu + job.n_gpus) for _, job in self.jobs]
        self.min_frac = np.array(
            [float(np.max(self.min_cap_w[r] / self.max_cap_w[r])) for r in self.rows]
        )
        self.min_speed = np.array([1.0 - spec.tolerances[job.tier] for _, job in self.jobs])
        self.ceiling = topo.gpu_max_cap_w.copy()
        self.speed = np.ones(len(self.jobs))
        self.frac = np.ones(len(self.jobs))
        self.last_track_s = 0.0
        self.last_done = np.zeros(len(self.jobs))

    def done_s(self) -> FloatArray:
        """Each shifted job's work since t = 0, in seconds of full-speed running."""
        work = self.cluster.workloads.work
        out = np.array([work[k] * job.iteration_s for k, job in self.jobs], dtype=np.float64)
        return out - self.work_at_zero

    def _replan(self, now_s: float, done: FloatArray) -> None:
        slot_s = self.spec.slot_s
        for i, (_, job) in enumerate(self.jobs):
            if now_s < self.begin_s[i] or now_s >= self.deadline_s[i]:
                self.speed[i] = 1.0
                continue
            last = int(np.ceil(self.deadline_s[i] / slot_s))
            forecast = self.signal[self.slot : max(last, self.slot + 1)]
            # The current slot is partly spent: count the time left in it, not a whole slot.
            left_s = self.deadline_s[i] - now_s
            owed = self.target_s[i] - float(done[i])
            self.speed[i] = job_speed_now(
                forecast,
                owed_s=owed * forecast.size * slot_s / max(left_s, 1e-9),
                slot_s=slot_s,
                tolerance=self.spec.tolerances[job.tier],
                settings=self.settings,
            )

    def _track(self, now_s: float, done: FloatArray) -> None:
        """Steer each job's cap fraction so its measured speed follows the plan."""
        span = now_s - self.last_track_s
        if span >= self.spec.track_s:
            measured = (done - self.last_done) / span
            self.frac = track_power_frac(
                self.frac,
                planned_speed=self.speed,
                measured_speed=measured,
                min_speed=self.min_speed,
                min_frac=self.min_frac,
                gamma=self.settings.gamma,
            )
            self.last_track_s, self.last_done = now_s, done
        self.frac = np.where(self.speed >= 1.0 - 1e-9, 1.0, self.frac)
        ceiling = self.max_cap_w.copy()
        for i, rows in enumerate(self.rows):  # jobs, not GPUs: a handful per fleet
            ceiling[rows] = np.clip(
                self.frac[i] * self.max_cap_w[rows], self.min_cap_w[rows], self.max_cap_w[rows]
            )
        self.ceiling = ceiling

    def decide(
        self,
        fleet: FleetState,
        limits: Limits,
        now_s: float,
        stale_rack: NDArray[np.bool_],
    ) -> Actuation | None:
        act = self.inner.decide(fleet, limits, now_s, stale_rack)
        if now_s < 0:
            return act
        if not self.started:
            self.started = True
            work = self.cluster.workloads.work
            self.work_at_zero = np.array([work[k] * job.iteration_s for k, job in self.jobs])
            self.last_track_s = now_s
        done = self.done_s()
        slot = int(now_s // self.spec.slot_s)
        if slot != self.slot:
            self.slot = min(slot, self.signal.size - 1)
            self._replan(now_s, done)
        self._track(now_s, done)
        if act is None:
            return self.ceiling, np.full(self.ceiling.size, 1e4)
        cap_w, clock_mhz = act
        return np.minimum(cap_w, self.ceiling), clock_mhz


def wrap(controller: Controller, cluster: SimCluster, scenario: Scenario) -> Controller:
    """The controller with carbon-aware Flex 2-3 budgets when the scenario asks for them."""
    if scenario.carbon_policy is None or controller.name != "rheostat":
        return controller
    return CarbonShifter(controller, cluster, scenario)


def blind_twin(scenario: Scenario) -> Scenario:
    """The same scenario with the carbon signal ignored by the policy (not by the accounting)."""
    spec = scenario.carbon_policy
    if spec is None:
        raise ValueError("scenario has no carbon_policy")
    blind = spec.model_copy(update={"signal_aware": False})
    return scenario.model_copy(update={"carbon_policy": blind})


def work_targets(controlled: RunResult) -> list[dict[str, Any]]:
    """Each shifted job's daily target and the work done. Units: s of full-speed running."""
    spec = controlled.scenario.carbon_policy
    if spec is None:
        return []
    out: list[dict[str, Any]] = []
    dur = controlled.scenario.duration_s
    for k, job in enumerate(controlled.cluster.workloads.training):
        if job.tier not in spec.shift_tiers:
            continue
        window = max(min(float(job.end_s), dur) - max(float(job.start_s), 0.0), 0.0)
        target = spec.work_target_frac[job.tier] * window
        done = float(controlled.job_work[k]) * job.iteration_s
        out.append(
            {
                "job": job.name,
                "tier": job.tier,
                "target_s": round(target, 1),
                "done_s": round(done, 1),
                "met": bool(done >= target),
            }
        )
    return out


def co2_reduction(controlled: RunResult, blind: RunResult) -> float | None:
    """1 - emissions / the blind twin's emissions, at the facility meter (fraction)."""
    a, b = controlled.facility, blind.facility
    if a is None or b is None or a.intensity_kg_per_mwh is None or b.co2_kg <= 0:
        return None
    return round(1.0 - a.co2_kg / b.co2_kg, 4)
