"""Carbon- and price-aware flexible work as one session: job reports and a forecast in, cap
ceilings out. The daemon's carbon hook and the simulator's closed loop both run this class.

Each report says what a Flex 2-3 job still owes before its deadline (`owed_s`, seconds of
full-speed running) and which GPUs it runs on. Every planning slot each shaped job's speed is
planned against the forecast up to its deadline (`policies.carbon.job_speed_now`); each job's
cap fraction is then steered from its measured speed (the fall of `owed_s` between reports at
least `track_s` apart) onto the plan (`track_power_frac`). The ceilings only ever lower the
core's caps, so every hard limit still holds. Without a forecast covering the span to the
deadline, or while a job's reports are stale, the job runs unshaped: no work is slowed on a
guess.

Floors. A job's cap never goes below the share of its max cap that a fixed power-speed table
(`FLOOR_CURVE_POWER`/`FLOOR_CURVE_SPEED`, the slow edge of measured power-limit sweeps) needs
for its tier's tolerated speed plus `SPEED_GUARD`, nor below its GPUs' min caps; whenever a
shaped job is measured slower than its tier tolerates, its floor rises above the cap that did
it. This is the one floor both compositions use, and it is the daemon's: a deployed controller
knows a job only through its reports (tier, GPUs, work owed), never its compute/communication
mix, clock exponent or voltage knee, so a floor derived from the simulator's physics would
measure a controller no site can run. A job's own power curve (`curve`, when its owner knows
one) only shapes the plan's trade-off of speed against power, never the floor.

Pure: numpy only, no clock reads, no I/O. Times are arguments (Unix seconds in the daemon, the
run's clock in the simulator).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from policies.carbon import (
    SPEED_GUARD,
    CarbonSettings,
    PowerCurve,
    job_speed_now,
    track_power_frac,
)
from policies.floors import activity_floor_caps
from policies.gpu_models import model_table
from policies.stages import Idle, Tick
from policies.topology import Topology

FloatArray = NDArray[np.float64]
Rows = NDArray[np.int64]

#: Speed of compute-bound training against its cap as a share of TDP, the slow edge of measured
#: power-limit sweeps (Zeus, NSDI 2023: 0.95 at 80 %, 0.83-0.89 at 60-67 %, 0.25-0.53 at
#: 33-40 %). See the module docstring for why the floor is read off this table.
FLOOR_CURVE_POWER = (0.33, 0.40, 0.60, 0.80, 1.00)
FLOOR_CURVE_SPEED = (0.25, 0.40, 0.83, 0.95, 1.00)
#: How far a job's floor comes down per measured window while the job runs faster at it than
#: its tier needs (a share of its max cap).
FLOOR_STEP = 0.02
#: Slots a forecast keeps by default: a week of five-minute slots.
MAX_SLOTS = 7 * 24 * 12


@dataclass(eq=False)
class Forecast:
    """A step-wise signal over time: `values[k]` holds from `starts[k]` to the next start.

    The last value holds until `end_s`; past it there is no forecast (nothing is shaped).
    `max_slots` bounds memory against a publisher that never stops sending.
    """

    starts: FloatArray = field(default_factory=lambda: np.zeros(0))
    values: FloatArray = field(default_factory=lambda: np.zeros(0))
    end_s: float = -math.inf
    max_slots: int = MAX_SLOTS

    @classmethod
    def steps(cls, start_s: float, slot_s: float, values: FloatArray) -> Forecast:
        """One value per `slot_s` from `start_s` on."""
        out = cls(max_slots=max(MAX_SLOTS, values.size))
        out.merge(start_s, slot_s, values)
        return out

    def merge(self, start_ts: float, slot_s: float, values: tuple[float, ...] | FloatArray) -> None:
        """Replace the forecast from `start_ts` on with these slots."""
        vals = np.asarray(values, dtype=np.float64)
        keep = self.starts < start_ts
        starts = np.concatenate([self.starts[keep], start_ts + slot_s * np.arange(vals.size)])
        merged = np.concatenate([self.values[keep], vals])
        if starts.size > self.max_slots:
            starts, merged = starts[-self.max_slots :], merged[-self.max_slots :]
        self.starts, self.values = starts, merged
        self.end_s = start_ts + slot_s * vals.size

    def at(self, t_s: float) -> float | None:
        if self.starts.size == 0 or t_s < self.starts[0] or t_s >= self.end_s:
            return None
        return float(self.values[np.searchsorted(self.starts, t_s, side="right") - 1])

    def slots(self, t0_s: float, t1_s: float, slot_s: float) -> FloatArray | None:
        """The signal at the start of each `slot_s` slot from `t0_s` up to `t1_s`, or None
        when the forecast does not cover the whole span (a plan on a guess is no plan)."""
        if self.at(t0_s) is None or t1_s > self.end_s + slot_s:
            return None
        n = max(1, math.ceil((t1_s - t0_s) / slot_s))
        t = t0_s + slot_s * np.arange(n)
        k = np.clip(np.searchsorted(self.starts, t, side="right") - 1, 0, self.values.size - 1)
        out: FloatArray = self.values[k]
        return out


@dataclass(eq=False, kw_only=True)
class FlexJob:
    """One flexible job as the session knows it. Units: s, fractions of full speed or max cap.

    `frac` is the cap fraction steered onto `planned`; `measured` the speed taken from its
    reports (NaN until two reports `track_s` apart); `floor_frac` the lowest cap fraction it
    may get (see the module docstring).
    """

    tier: int
    deadline_ts: float
    owed_s: float
    rows: Rows
    ts: float
    received_at_s: float
    curve: PowerCurve | None = None
    frac: float = 1.0
    planned: float = 1.0
    measured: float = math.nan
    anchor_ts: float = math.nan
    anchor_owed_s: float = math.nan
    min_frac: float = 0.0
    floor_frac: float = 0.0
    #: The floor had to rise once (the job was measured too slow): it never comes down again.
    floor_raised: bool = False
    #: Measured windows in a row spent on the floor.
    floor_windows: int = 0
    #: Work planned beyond what is owed: `target_margin_frac` of what the job owed when first
    #: reported, fixed so that it does not vanish as the deadline nears. Units: s.
    margin_s: float = 0.0


@dataclass(eq=False, kw_only=True)
class CarbonSession:
    """Flexible jobs planned against a forecast, for one controller's lifetime. Units: W, s."""

    settings: CarbonSettings
    topology: Topology
    forecast: Forecast = field(default_factory=Forecast)
    jobs: dict[str, FlexJob] = field(default_factory=dict)
    #: The planning slot last planned in; -1 forces a re-plan at the next tick.
    slot: int = -1
    #: Per GPU, the highest activity of this and the previous `track_s` window, and when this
    #: window began: the tier floors are sized for it (see `ceilings`).
    activity_peak: FloatArray | None = None
    activity_last: FloatArray | None = None
    activity_since_s: float = -math.inf

    def replan(self) -> None:
        """Plan again at the next tick (the jobs or the forecast changed)."""
        self.slot = -1

    def take_forecast(self, start_ts: float, slot_s: float, values: tuple[float, ...]) -> None:
        """Replace the forecast from `start_ts` on."""
        self.forecast.merge(start_ts, slot_s, values)
        self.replan()

    def report(
        self,
        name: str,
        *,
        ts: float,
        tier: int,
        deadline_ts: float,
        owed_s: float,
        rows: Rows,
        now_s: float,
        curve: PowerCurve | None = None,
    ) -> None:
        """A job's progress report, stamped `ts` by its owner and received at `now_s`.

        A report no newer than the last one is a replay and changes nothing.
        """
        job = self.jobs.get(name)
        if job is None:
            job = FlexJob(
                tier=tier,
                deadline_ts=deadline_ts,
                owed_s=owed_s,
                rows=rows,
                ts=ts,
                received_at_s=now_s,
                curve=curve,
                anchor_ts=ts,
                anchor_owed_s=owed_s,
                margin_s=self.settings.target_margin_frac * max(owed_s, 0.0),
            )
            self._set_floor(job)
            self.jobs[name] = job
            self.replan()
            return
        if ts <= job.ts:
            return
        moved = tier != job.tier or not np.array_equal(rows, job.rows)
        job.tier, job.rows, job.deadline_ts, job.owed_s = tier, rows, deadline_ts, owed_s
        job.ts, job.received_at_s, job.curve = ts, now_s, curve
        if moved:
            self._set_floor(job)
        self._track(job)

    def drop(self, name: str) -> None:
        """The job is gone (done, cancelled, or no longer flexible)."""
        if self.jobs.pop(name, None) is not None:
            self.replan()

    def set_topology(self, topology: Topology, rows_of: Callable[[str], Rows | None]) -> None:
        """The fleet changed: each job's rows are resolved again (dropped if they no longer fit)."""
        self.topology = topology
        for name, job in list(self.jobs.items()):
            rows = rows_of(name)
            if rows is None:
                del self.jobs[name]
            else:
                job.rows = rows
                self._set_floor(job)
        self.replan()

    def shaped(self, job: FlexJob, now_s: float) -> bool:
        """Whether the job's caps follow the plan now (a shifted tier, work owed, reports fresh)."""
        return (
            job.tier in self.settings.shift_tiers
            and job.owed_s > 0
            and now_s < job.deadline_ts
            and now_s - job.received_at_s <= self.settings.job_timeout_s
        )

    def ceilings(self, now_s: float, activity: FloatArray | None = None) -> FloatArray | None:
        """Per-GPU cap ceilings for this tick (max caps where nothing is shaped); None when no
        job is shaped. Re-plans at each slot boundary and whenever jobs or forecast change.

        `activity` is each GPU's peak-held SM activity as the core held it this tick (its
        decision's `activity_held`): no ceiling then goes below the core's tier floor for the
        job's tier (`policies.floors.activity_floor_caps`), the cap at which each GPU itself
        keeps its tier's speed, sized for the peak activity of the last `track_s` or more. A
        job's measured progress cannot show that: its communication phases do not slow under
        a cap, so a job whose progress is within its tolerance can compute slower than the
        tolerance allows, and its GPUs differ (models, activity) where its cap fraction is one.
        """
        slot = math.floor(now_s / self.settings.slot_s)
        if slot != self.slot:
            self.slot = slot
            self._plan(now_s)
        topo = self.topology
        held = None if activity is None else self._hold(now_s, activity)
        ceiling: FloatArray | None = None
        for job in self.jobs.values():
            if not self.shaped(job, now_s) or job.planned >= 1.0 - 1e-9:
                job.frac = 1.0
                continue
            if ceiling is None:
                ceiling = topo.gpu_max_cap_w.copy()
            rows = job.rows
            lowest = topo.gpu_min_cap_w[rows]
            if held is not None:
                lowest = np.maximum(lowest, self._tier_floor_w(job, held))
                # Below every GPU's floor a lower fraction changes no cap: steering it there
                # would only wind the tracking up, to be unwound before any cap rises.
                job.frac = max(job.frac, float(np.min(lowest / topo.gpu_max_cap_w[rows])))
            frac = max(job.frac, job.floor_frac)
            ceiling[rows] = np.clip(frac * topo.gpu_max_cap_w[rows], lowest, ceiling[rows])
        return ceiling

    # ------------------------------------------------------------------------------ inside
    def _hold(self, now_s: float, activity: FloatArray) -> FloatArray:
        """The peak of `activity` over at least the last `track_s`: a tick's activity swings
        with a job's compute and communication phases, and a floor sized for a dip would let
        the next compute phase run below its tier's speed under the same cap."""
        peak, last = self.activity_peak, self.activity_last
        if peak is None or last is None or peak.shape != activity.shape:
            self.activity_peak, self.activity_last = activity.copy(), activity.copy()
            self.activity_since_s = now_s
            return activity.copy()
        if now_s - self.activity_since_s >= self.settings.track_s:
            last, peak = peak, activity.copy()
            self.activity_last, self.activity_peak = last, peak
            self.activity_since_s = now_s
        else:
            np.maximum(peak, activity, out=peak)
        held: FloatArray = np.maximum(peak, last)
        return held

    def _tier_floor_w(self, job: FlexJob, activity: FloatArray) -> FloatArray:
        rows = job.rows
        topo = self.topology
        idle = model_table("idle_w")[topo.gpu_model[rows]]
        floor = activity_floor_caps(
            idle_w=idle,
            dynamic_w=topo.gpu_max_cap_w[rows] - idle,
            activity=activity[rows],
            tier=np.full(rows.size, job.tier, dtype=np.int8),
            tolerances=self.settings.tolerances,
        )
        return np.minimum(floor, topo.gpu_max_cap_w[rows])

    def _set_floor(self, job: FlexJob) -> None:
        topo = self.topology
        job.min_frac = float(np.max(topo.gpu_min_cap_w[job.rows] / topo.gpu_max_cap_w[job.rows]))
        speed = min(1.0 - self.settings.tolerances[job.tier] + SPEED_GUARD, 1.0)
        need = float(np.interp(speed, FLOOR_CURVE_SPEED, FLOOR_CURVE_POWER))
        job.floor_frac = min(max(need, job.min_frac), 1.0)

    def _track(self, job: FlexJob) -> None:
        """Measured speed from the fall of `owed_s`; steer the cap fraction onto the plan."""
        span = job.ts - job.anchor_ts
        if span < self.settings.track_s:
            return
        job.measured = max(job.anchor_owed_s - job.owed_s, 0.0) / span
        tol = self.settings.tolerances[job.tier]
        # Windows in a row whose cap sat on the floor: the first one after a drop still mixes
        # the speed before it, so only a later one measures the floor.
        job.floor_windows = job.floor_windows + 1 if job.frac <= job.floor_frac * (1 + 1e-6) else 0
        if job.planned < 1.0 and job.measured < 1.0 - tol:
            # Slower than the tier allows at this cap: never go this low again for this job.
            job.floor_frac = min(max(job.floor_frac, job.frac * 1.1), 1.0)
            job.floor_raised = True
        elif self._faster_at_floor(job, tol):
            # Its own curve is faster than the table's slow edge: the floor comes down by a
            # small step per measured window, so a steep stretch of the job's curve (below its
            # voltage knee) shows in the next measurement before it costs the tolerance.
            job.floor_frac = max(job.floor_frac - FLOOR_STEP, job.min_frac)
            job.floor_windows = 0
        job.frac = float(
            track_power_frac(
                np.array([job.frac]),
                planned_speed=np.array([job.planned]),
                measured_speed=np.array([job.measured]),
                min_speed=np.array([1.0 - tol]),
                min_frac=np.array([job.floor_frac]),
                gamma=self.settings.gamma,
            )[0]
        )
        job.anchor_ts, job.anchor_owed_s = job.ts, job.owed_s

    @staticmethod
    def _faster_at_floor(job: FlexJob, tol: float) -> bool:
        """The plan wants the job slower than it runs, its cap sits on its floor, and it runs
        faster there than a guard above the speed its tier needs with a guard."""
        return (
            not job.floor_raised
            and job.planned < job.measured
            and job.floor_windows >= 2
            and job.measured > 1.0 - tol + 2.0 * SPEED_GUARD
            and job.floor_frac > job.min_frac
        )

    def _plan(self, now_s: float) -> None:
        slot_s = self.settings.slot_s
        for job in self.jobs.values():
            forecast = (
                self.forecast.slots(now_s, job.deadline_ts, slot_s)
                if self.shaped(job, now_s)
                else None
            )
            if forecast is None:
                job.planned = 1.0
                continue
            # The current slot is partly spent: the work owed per slot counts the time left.
            per_slot = forecast.size * slot_s / max(job.deadline_ts - now_s, 1e-9)
            job.planned = job_speed_now(
                forecast,
                owed_s=job.owed_s * per_slot,
                margin_s=job.margin_s * per_slot,
                slot_s=slot_s,
                tolerance=self.settings.tolerances[job.tier],
                settings=self.settings,
                curve=job.curve,
            )


class CarbonStage(Idle):
    """The session as a tick stage: its ceilings lower the core's caps after it decided."""

    def __init__(self, session: CarbonSession) -> None:
        self.session = session

    def ceilings(self, tick: Tick) -> None:
        decision = tick.decision
        activity = None if decision is None else decision.activity_held
        topo = self.session.topology
        if activity is not None and activity.shape != (topo.n_gpus,):
            activity = None  # decided for another fleet (the topology is changing)
        if activity is not None and tick.stale_rack is not None and tick.stale_rack.any():
            # A silent rack's activity is unknown: its floors are sized for full activity.
            stale = tick.stale_rack[topo.gpu_group[topo.rack_level]]
            activity = np.where(stale, 1.0, activity)
        ceiling = self.session.ceilings(tick.now_s, activity)
        if ceiling is not None:
            tick.cap_ceiling(ceiling)
