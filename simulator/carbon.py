"""Carbon-aware flexible work in the closed loop, and the carbon-blind twins it is compared with.

`CarbonShifter` wraps a controller: after the decision core has set caps inside every limit, it
lowers the caps of Flex 2-3 training jobs to the speed `policies.carbon` plans for this slot
(only ever lower, so every limit still holds). Each job owes a daily amount of work: a fraction
of what it would do at full speed between t = 0 (or its start) and its deadline (its end, or the
run's). Progress is read from the job's measured work (a scheduler reports it), the plan is redone
every slot against the job's real power-speed curve (`job_power_curve`, from the simulator's
physics), and a job stops once its target is done. The forecast is the day's signal itself (a
day-ahead marginal-emissions forecast, assumed exact).

`carbon_policy.schedule` picks what runs:
- `carbon`: the carbon-aware plan above;
- `run_to_target` (the *blind twin*, `co2_reduction_vs_blind`): what the site does without carbon
  awareness. The same jobs run under the normal Rheostat policy, at the speed the controller gives
  them, from the start of the day until their daily target is done, then stop and idle;
- `even` (`co2_reduction_vs_even`, a stricter reference): the same daily work spread evenly over
  the day, the energy-optimal schedule for a convex power-speed curve when the signal is ignored.

All three do the same work: each job stops the tick its target is reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.carbon import (
    SPEED_GUARD,
    CarbonSettings,
    PowerCurve,
    job_speed_now,
    track_power_frac,
)
from policies.decision import Limits
from policies.fleet import FleetState
from simulator.physics import ALPHA_COMPUTE, VOLTAGE_KNEE, dynamic_fraction
from simulator.workloads import TRAIN_COMM_ACTIVITY, TRAIN_COMPUTE_ACTIVITY

if TYPE_CHECKING:
    from simulator.cluster import SimCluster
    from simulator.controllers import Actuation, Controller
    from simulator.loop import RunResult
    from simulator.scenario import Scenario

FloatArray = NDArray[np.float64]


class CarbonPolicySpec(BaseModel):
    """Carbon-aware budgets for flexible work (needs `grid.carbon`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schedule: Literal["carbon", "run_to_target", "even"] = Field(
        default="carbon",
        description="carbon = the carbon-aware plan; run_to_target = the blind twin (full speed "
        "until the daily target is done, then stop); even = the same work spread evenly",
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


def job_power_curve(
    comm_frac: float,
    min_clock_frac: float = 0.3,
    *,
    compute_activity: float = TRAIN_COMPUTE_ACTIVITY,
    alpha: float = ALPHA_COMPUTE,
    knee: float = VOLTAGE_KNEE,
    static_frac: float = 0.0,
) -> PowerCurve:
    """A training job's power above idle against its measured speed, from the simulator's physics.

    Per clock fraction x: compute runs at x^alpha (the job's own exponent), communication does
    not slow, so the job's speed is 1 / ((1 - comm) / x^alpha + comm); power is the busy-weighted
    activity (the job's own compute activity, from its uncapped draw) times the GPU's curve above
    idle, s + (1 - s) * g(x) with its model's knee and static share (`simulator.physics`). Idle
    and server power are left out: they are drawn whether the job runs or not. Cooling and UPS
    losses scale with IT power, so they scale this curve and do not move the plan.
    """
    x = np.linspace(min_clock_frac, 1.0, 141)
    gpu_speed = x**alpha
    speed = 1.0 / ((1.0 - comm_frac) / gpu_speed + comm_frac)
    busy = (1.0 - comm_frac) / gpu_speed * speed
    activity = compute_activity * busy + TRAIN_COMM_ACTIVITY * (1.0 - busy)
    shape = static_frac + (1.0 - static_frac) * dynamic_fraction(x, knee)
    return PowerCurve.from_table(speed, activity * shape)


def floor_cap_w(
    speed: float,
    comm_frac: float,
    idle_w: FloatArray,
    span_w: FloatArray,
    *,
    compute_activity: float = TRAIN_COMPUTE_ACTIVITY,
    alpha: float = ALPHA_COMPUTE,
    knee: float | FloatArray = VOLTAGE_KNEE,
    static_frac: float | FloatArray = 0.0,
) -> FloatArray:
    """Per GPU, a cap under which a training job still runs at `speed` (fraction) or faster.

    The inverse of `job_power_curve` taken at the job's compute-phase activity: the cap lets
    each compute phase run at the clock this speed needs even at its busiest, and communication
    needs no clock. Feedback on measured progress trims the cap above this floor, never below
    it, so a tier's tolerance holds while the feedback settles. Units: W.
    """
    gpu_speed = (1.0 - comm_frac) / (1.0 / max(speed, 1e-3) - comm_frac)
    clock = np.array([min(gpu_speed, 1.0) ** (1.0 / alpha)])
    shape = static_frac + (1.0 - np.asarray(static_frac)) * dynamic_fraction(clock, knee)
    out: FloatArray = idle_w + span_w * compute_activity * shape
    return out


@dataclass(eq=False, kw_only=True)
class CarbonLog:
    """What the shifter saw of each shifted job, for the summary. Units: s, fractions.

    `min_speed` is the lowest speed measured (progress over `track_s` windows against full
    speed) while the job still owed work: its largest slowdown is `1 - min_speed`.
    """

    schedule: str
    names: list[str]
    tiers: list[int]
    target_s: list[float]
    min_speed: list[float]
    stopped_at_s: list[float | None] = field(default_factory=list)


class CarbonShifter:
    """A controller whose Flex 2-3 training jobs follow their daily schedule. Units: W, s."""

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
        self.signal = per_slot if spec.schedule == "carbon" else np.ones(n_slots)
        wl = cluster.workloads
        self.jobs = [(k, job) for k, job in enumerate(wl.training) if job.tier in spec.shift_tiers]
        consts = cluster.consts
        self.rows = [slice(job.start_gpu, job.start_gpu + job.n_gpus) for _, job in self.jobs]
        self.curves = [
            job_power_curve(
                job.comm_frac,
                compute_activity=job.compute_activity,
                alpha=job.alpha,
                knee=float(np.mean(consts.knee[rows])),
                static_frac=float(np.mean(consts.static_frac[rows])),
            )
            for (_, job), rows in zip(self.jobs, self.rows, strict=True)
        ]
        self.deadline_s = [min(job.end_s, scenario.duration_s) for _, job in self.jobs]
        self.begin_s = [max(job.start_s, 0.0) for _, job in self.jobs]
        self.owed_s = np.array(
            [
                spec.work_target_frac[job.tier] * max(end - begin, 0.0)
                for (_, job), begin, end in zip(
                    self.jobs, self.begin_s, self.deadline_s, strict=True
                )
            ]
        )
        # Planned against a target a little above the one owed, so rounding and measurement
        # noise at the end of the day never leave a job short; the job stops at the one owed.
        self.target_s = self.owed_s * (1.0 + self.settings.target_margin_frac)
        self.log = CarbonLog(
            schedule=spec.schedule,
            names=[job.name for _, job in self.jobs],
            tiers=[job.tier for _, job in self.jobs],
            target_s=[float(t) for t in self.owed_s],
            min_speed=[1.0] * len(self.jobs),
            stopped_at_s=[None] * len(self.jobs),
        )
        self.work_at_zero = np.zeros(len(self.jobs))
        self.started = False
        self.slot = -1
        topo = cluster.topology
        self.max_cap_w = topo.gpu_max_cap_w
        self.min_cap_w = topo.gpu_min_cap_w
        self.min_frac = np.array(
            [float(np.max(self.min_cap_w[r] / self.max_cap_w[r])) for r in self.rows]
        )
        self.min_speed = np.array([1.0 - spec.tolerances[job.tier] for _, job in self.jobs])
        # Per GPU, the lowest cap each shifted job may get: its tolerance plus the guard.
        self.floor_w = self.min_cap_w.copy()
        for i, ((_, job), rows) in enumerate(zip(self.jobs, self.rows, strict=True)):
            want = self.floor_w[rows]
            need = floor_cap_w(
                float(self.min_speed[i]) + SPEED_GUARD,
                job.comm_frac,
                consts.idle_w[rows],
                consts.span_w[rows],
                compute_activity=job.compute_activity,
                alpha=job.alpha,
                knee=consts.knee[rows],
                static_frac=consts.static_frac[rows],
            )
            self.floor_w[rows] = np.minimum(np.maximum(want, need), self.max_cap_w[rows])
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

    def _stop_finished(self, now_s: float, done: FloatArray) -> None:
        """End the day's run of every job whose target is done: its GPUs go idle."""
        wl = self.cluster.workloads
        jobs = list(wl.training)
        stopped = False
        for i, (k, _) in enumerate(self.jobs):
            if self.log.stopped_at_s[i] is None and done[i] >= self.owed_s[i]:
                jobs[k] = replace(jobs[k], end_s=min(jobs[k].end_s, now_s))
                self.log.stopped_at_s[i] = now_s
                self.speed[i] = 1.0
                stopped = True
        if stopped:  # the workloads read `end_s` each tick: the job's GPUs idle from now on
            wl.training = tuple(jobs)

    def _replan(self, now_s: float, done: FloatArray) -> None:
        slot_s = self.spec.slot_s
        for i, (_, job) in enumerate(self.jobs):
            if (
                self.spec.schedule == "run_to_target"
                or self.log.stopped_at_s[i] is not None
                or now_s < self.begin_s[i]
                or now_s >= self.deadline_s[i]
            ):
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
                curve=self.curves[i],
            )

    def _track(self, now_s: float, done: FloatArray) -> None:
        """Steer each job's cap fraction so its measured speed follows the plan."""
        span = now_s - self.last_track_s
        if span >= self.spec.track_s:
            measured = (done - self.last_done) / span
            for i in range(len(self.jobs)):  # jobs, not GPUs
                owing = self.log.stopped_at_s[i] is None and done[i] < self.owed_s[i]
                if owing and self.last_track_s >= self.begin_s[i] and now_s <= self.deadline_s[i]:
                    self.log.min_speed[i] = min(self.log.min_speed[i], float(measured[i]))
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
                self.frac[i] * self.max_cap_w[rows], self.floor_w[rows], self.max_cap_w[rows]
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
        # `now_s` is the cluster's clock, one tick ahead of the loop's: the day's work is counted
        # from the first decision after the loop's t = 0 tick, as the run's own accounting does.
        if now_s <= 0:
            return act
        if not self.started:
            self.started = True
            work = self.cluster.workloads.work
            self.work_at_zero = np.array([work[k] * job.iteration_s for k, job in self.jobs])
            self.last_track_s = now_s
        done = self.done_s()
        self._stop_finished(now_s, done)
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
    """The controller with scheduled Flex 2-3 work when the scenario has a carbon policy."""
    if scenario.carbon_policy is None or controller.name != "rheostat":
        return controller
    return CarbonShifter(controller, cluster, scenario)


def twin(scenario: Scenario, schedule: Literal["carbon", "run_to_target", "even"]) -> Scenario:
    """The same scenario under another schedule (the accounting still sees the signal)."""
    spec = scenario.carbon_policy
    if spec is None:
        raise ValueError("scenario has no carbon_policy")
    other = spec.model_copy(update={"schedule": schedule})
    return scenario.model_copy(update={"carbon_policy": other})


def blind_twin(scenario: Scenario) -> Scenario:
    """What the site does without carbon awareness: run until the daily target is done."""
    return twin(scenario, "run_to_target")


def even_twin(scenario: Scenario) -> Scenario:
    """The same daily work spread evenly over the day (the stricter reference)."""
    return twin(scenario, "even")


def work_targets(controlled: RunResult) -> list[dict[str, Any]]:
    """Each shifted job's daily target, the work done and its largest slowdown while owing work.

    Units: s of full-speed running; `max_slowdown` is a fraction of full speed, to compare with
    the tier's tolerance.
    """
    spec = controlled.scenario.carbon_policy
    if spec is None:
        return []
    log = controlled.carbon
    out: list[dict[str, Any]] = []
    dur = controlled.scenario.duration_s
    train_specs = [w for w in controlled.scenario.workloads if w.kind == "training"]
    for k, (job, ws) in enumerate(
        zip(controlled.cluster.workloads.training, train_specs, strict=True)
    ):
        if job.tier not in spec.shift_tiers:
            continue
        # The window comes from the scenario: a job stopped at its target has a shorter end_s.
        end_s = dur if ws.end_s is None else min(ws.end_s, dur)
        window = max(end_s - max(ws.start_s, 0.0), 0.0)
        target = spec.work_target_frac[job.tier] * window
        done = float(controlled.job_work[k]) * job.iteration_s
        entry: dict[str, Any] = {
            "job": job.name,
            "tier": job.tier,
            "target_s": round(target, 1),
            "done_s": round(done, 1),
            "met": bool(done >= target),
        }
        if log is not None and job.name in log.names:
            i = log.names.index(job.name)
            entry["max_slowdown"] = round(1.0 - log.min_speed[i], 4)
            entry["tolerance"] = spec.tolerances[job.tier]
            stop = log.stopped_at_s[i]
            entry["stopped_at_s"] = None if stop is None else round(stop, 1)
        out.append(entry)
    return out


def co2_reduction(controlled: RunResult, other: RunResult) -> float | None:
    """1 - emissions / another schedule's emissions, at the facility meter (fraction)."""
    a, b = controlled.facility, other.facility
    if a is None or b is None or a.intensity_kg_per_mwh is None or b.co2_kg <= 0:
        return None
    return round(1.0 - a.co2_kg / b.co2_kg, 4)
