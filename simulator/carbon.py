"""Carbon-aware flexible work in the closed loop, and the carbon-blind twins it is compared with.

The planning is the daemon's: `policies.carbon_session.CarbonSession`, run as the controller's
carbon stage (`CarbonStage`, in the order `policies.stages.ordered` gives it). What this module
adds is the cluster scheduler's side, from the simulator's physics (`FlexWork`): each Flex 2-3
training job owes a daily amount of work, a fraction of what it would do at full speed between
t = 0 (or its start) and its deadline (its end, or the run's); every tick the scheduler reports
each running job's work still owed to the session, as a real one does on the jobs topic, with
the job's power-speed curve (`job_power_curve`) for the plan's trade-off, and ends a job's day
once its target is done. The forecast is the day's signal itself (a day-ahead
marginal-emissions forecast, assumed exact).

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
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from policies.carbon import PowerCurve
from policies.carbon_session import CarbonSession, CarbonStage, Forecast
from policies.stages import Idle, Tick
from simulator.physics import ALPHA_COMPUTE, VOLTAGE_KNEE, dynamic_fraction
from simulator.workloads import TRAIN_COMM_ACTIVITY, TRAIN_COMPUTE_ACTIVITY

if TYPE_CHECKING:
    from simulator.cluster import SimCluster
    from simulator.scenario import Scenario

FloatArray = NDArray[np.float64]


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


class FlexWork(Idle):
    """The scheduler's side of the shifted jobs, as a measurement feed of the controller's stages.

    Each tick from t = 0 it reports every running job's work still owed (from the physics) to the
    controller's carbon session, ends the day's run of a job whose target is done, and logs each
    job's lowest measured speed while it owed work. Under `run_to_target` there is no session:
    the jobs run as the controller lets them until their target is done.
    """

    def __init__(self, cluster: SimCluster, scenario: Scenario) -> None:
        from simulator.rates import carbon_per_tick  # noqa: PLC0415

        spec = scenario.carbon_policy
        if spec is None:
            raise ValueError("scenario has no carbon_policy")
        self.spec = spec
        self.settings = spec.settings()
        self.cluster = cluster
        n_slots = int(np.ceil(scenario.duration_s / spec.slot_s))
        per_slot = carbon_per_tick(n_slots, spec.slot_s, start_s=scenario.grid.carbon_start_s)
        self.signal = per_slot if spec.schedule == "carbon" else np.ones(n_slots)
        wl = cluster.workloads
        self.jobs = [(k, job) for k, job in enumerate(wl.training) if job.tier in spec.shift_tiers]
        consts = cluster.consts
        self.rows = [
            np.arange(job.start_gpu, job.start_gpu + job.n_gpus, dtype=np.int64)
            for _, job in self.jobs
        ]
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
        self.log = CarbonLog(
            schedule=spec.schedule,
            names=[job.name for _, job in self.jobs],
            tiers=[job.tier for _, job in self.jobs],
            target_s=[float(t) for t in self.owed_s],
            min_speed=[1.0] * len(self.jobs),
            stopped_at_s=[None] * len(self.jobs),
        )
        self.work_at_zero: FloatArray | None = None
        self.last_track_s = 0.0
        self.last_done = np.zeros(len(self.jobs))
        self.stage: CarbonStage | None = None
        if spec.schedule != "run_to_target":
            self.stage = CarbonStage(self._session())

    def _session(self) -> CarbonSession:
        forecast = Forecast.steps(0.0, self.spec.slot_s, self.signal)
        return CarbonSession(
            settings=self.settings, topology=self.cluster.topology, forecast=forecast
        )

    def restart(self) -> None:
        """The controller restarted: its session starts empty and learns the jobs again from
        their next reports, as a restarted daemon does from the retained job messages."""
        if self.stage is not None:
            self.stage.session = self._session()

    def done_s(self) -> FloatArray:
        """Each shifted job's work since t = 0, in seconds of full-speed running."""
        work = self.cluster.workloads.work
        out = np.array([work[k] * job.iteration_s for k, job in self.jobs], dtype=np.float64)
        return out if self.work_at_zero is None else out - self.work_at_zero

    def observe(self, tick: Tick) -> None:
        now = tick.now_s
        if now < 0:
            return
        if self.work_at_zero is None:
            self.work_at_zero = self.done_s()
            self.last_track_s = now
        done = self.done_s()
        self._stop_finished(done)
        self._measure(now, done)
        session = None if self.stage is None else self.stage.session
        if session is None:
            return
        for i, (_, job) in enumerate(self.jobs):
            if self.log.stopped_at_s[i] is not None or now < self.begin_s[i]:
                continue
            session.report(
                job.name,
                ts=now,
                tier=job.tier,
                deadline_ts=self.deadline_s[i],
                owed_s=max(float(self.owed_s[i] - done[i]), 0.0),
                rows=self.rows[i],
                now_s=now,
                curve=self.curves[i],
            )

    def _stop_finished(self, done: FloatArray) -> None:
        """End the day's run of every job whose target is done: its GPUs go idle."""
        wl = self.cluster.workloads
        now = self.cluster.now_s
        jobs = list(wl.training)
        stopped = False
        for i, (k, job) in enumerate(self.jobs):
            if self.log.stopped_at_s[i] is None and done[i] >= self.owed_s[i]:
                jobs[k] = replace(jobs[k], end_s=min(jobs[k].end_s, now))
                self.log.stopped_at_s[i] = now
                if self.stage is not None:
                    self.stage.session.drop(job.name)
                stopped = True
        if stopped:  # the workloads read `end_s` each tick: the job's GPUs idle from now on
            wl.training = tuple(jobs)

    def _measure(self, now: float, done: FloatArray) -> None:
        """Each job's speed over `track_s` windows while it owes work, for the log."""
        span = now - self.last_track_s
        if span < self.spec.track_s:
            return
        measured = (done - self.last_done) / span
        for i in range(len(self.jobs)):  # jobs, not GPUs
            owing = self.log.stopped_at_s[i] is None and done[i] < self.owed_s[i]
            if owing and self.last_track_s >= self.begin_s[i] and now <= self.deadline_s[i]:
                self.log.min_speed[i] = min(self.log.min_speed[i], float(measured[i]))
        self.last_track_s, self.last_done = now, done


def flex_work(cluster: SimCluster, scenario: Scenario, controller: str) -> FlexWork | None:
    """The scheduled Flex 2-3 work when the scenario has a carbon policy and Rheostat controls."""
    if scenario.carbon_policy is None or controller != "rheostat":
        return None
    return FlexWork(cluster, scenario)


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
