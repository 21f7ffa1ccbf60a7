"""The daemon's carbon- and price-aware flexible work: jobs and a grid signal in, cap ceilings out.

Flex 2-3 jobs owe a daily amount of work, not a speed (`policies.carbon`). Planning them needs two
things the racks' telemetry does not carry, so they arrive on their own topics (wire protocol v1,
JSON, QoS 1):

- the grid signal, a forecast of carbon intensity or price, from the policy's `signal_file` or
  from an energy-management system on `rheostat/v1/<site>/grid/signal`:
  `{"v": 1, "ts": 1764300000.0, "start_ts": 1764300000.0, "slot_s": 300, "values": [412.0, ...]}`
  (values from `start_ts`, one per `slot_s`; a message replaces the forecast from its start on);
- the jobs, from the cluster scheduler, retained on `rheostat/v1/<site>/jobs/<job>`:
  `{"v": 1, "ts": ..., "tier": 3, "deadline_ts": ..., "owed_s": 5400.0,
    "gpus": [{"rack": "r0001", "first": 0, "count": 8}]}`
  where `owed_s` is the work still owed before the deadline, in seconds of full-speed running
  (the scheduler knows progress: steps done against steps per second at full speed). An empty
  retained message removes the job. `deadline_ts` and `owed_s` come together or not at all: a
  job without them is not shifted. `"sync": true` (optional) marks a synchronous job, whose GPUs
  the decision paces to its slowest (`controller/jobs.py`).

Each slot every shifted job's speed is planned against the forecast up to its deadline
(`policies.carbon.job_speed_now`), and each job's cap fraction is steered from its measured speed
(the fall of `owed_s` over time) onto the plan (`track_power_frac`). The daemon lowers the core's
caps to these ceilings, never raises them, so every hard limit still holds. Without a forecast
covering now, or while a job's reports are stale, the job runs unshaped: no work is slowed on a
guess.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.config.carbon import CarbonSection
from controller.metric_families import describe_families
from controller.wire import (
    JOB_ID_CHARS,
    MAX_FORECAST_SLOTS,
    TOPIC_ROOT,
    GpuRange,
    JobReport,
    decode_job,
    decode_signal,
    jobs_filter,
    signal_topic,
)
from policies.carbon import SPEED_GUARD, CarbonSettings, job_speed_now, track_power_frac
from policies.errors import ConfigError, ProtocolError
from policies.topology import Topology

FloatArray = NDArray[np.float64]

__all__ = ["CarbonCollector", "CarbonHook", "CarbonSection", "Forecast", "job_rows"]

#: Jobs one site may report at once: bounds memory against a runaway publisher.
MAX_JOBS = 10_000
#: Speed of compute-bound training against its cap as a share of TDP, the slow edge of measured
#: power-limit sweeps (Zeus, NSDI 2023: 0.95 at 80 %, 0.83-0.89 at 60-67 %, 0.25-0.53 at
#: 33-40 %). A job's cap never goes below the share this table needs for its tier's tolerated
#: speed, so a plan cannot starve it before its measured progress says so; the measured speed
#: then raises that floor for the job if its own curve is slower still.
FLOOR_CURVE_POWER = (0.33, 0.40, 0.60, 0.80, 1.00)
FLOOR_CURVE_SPEED = (0.25, 0.40, 0.83, 0.95, 1.00)


def job_rows(topology: Topology, gpus: tuple[GpuRange, ...]) -> NDArray[np.int64] | None:
    """The fleet rows of a job's GPU ranges, sorted; None if a rack is unknown or a range runs
    past its rack's GPUs."""
    parts = []
    for g in gpus:
        rack = topology.rack_index.get(g.rack)
        if rack is None:
            return None
        lo, hi = int(topology.rack_offsets[rack]), int(topology.rack_offsets[rack + 1])
        if lo + g.first + g.count > hi:
            return None
        parts.append(np.arange(lo + g.first, lo + g.first + g.count, dtype=np.int64))
    return np.unique(np.concatenate(parts))


# ---------------------------------------------------------------------------------- forecast
@dataclass(eq=False)
class Forecast:
    """A step-wise signal over Unix time: `values[k]` holds from `starts[k]` to the next start.

    The last value holds until `end_s`; past it there is no forecast (nothing is shaped).
    """

    starts: FloatArray = field(default_factory=lambda: np.zeros(0))
    values: FloatArray = field(default_factory=lambda: np.zeros(0))
    end_s: float = -math.inf

    def merge(self, start_ts: float, slot_s: float, values: tuple[float, ...] | FloatArray) -> None:
        """Replace the forecast from `start_ts` on with these slots."""
        vals = np.asarray(values, dtype=np.float64)
        keep = self.starts < start_ts
        starts = np.concatenate([self.starts[keep], start_ts + slot_s * np.arange(vals.size)])
        merged = np.concatenate([self.values[keep], vals])
        if starts.size > MAX_FORECAST_SLOTS:
            starts, merged = starts[-MAX_FORECAST_SLOTS:], merged[-MAX_FORECAST_SLOTS:]
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


def load_signal_file(path: Path) -> tuple[FloatArray, FloatArray]:
    """(Unix seconds, value) from a two-column CSV with a header; times must increase."""
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            rows = [(float(a), float(b)) for a, b in reader]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the grid signal: {exc}", file=str(path)) from None
    if len(rows) < 2:
        raise ConfigError("the grid signal needs at least two rows", file=str(path))
    t = np.array([r[0] for r in rows])
    v = np.array([r[1] for r in rows])
    if np.any(np.diff(t) <= 0):
        raise ConfigError("times must increase", file=str(path), field="unix_s")
    if not np.all(np.isfinite(v)):
        raise ConfigError("values must be finite", file=str(path), field="value")
    return t, v


# ---------------------------------------------------------------------------------- the hook
@dataclass(eq=False, kw_only=True)
class _Job:
    report: JobReport
    rows: NDArray[np.int64]
    received_at_s: float
    frac: float = 1.0
    planned: float = 1.0
    measured: float = math.nan
    anchor_ts: float = math.nan
    anchor_owed_s: float = math.nan
    min_frac: float = 0.0
    #: Lowest cap fraction for this job: its tier's tolerated speed on the floor curve, raised
    #: whenever its measured speed fell below that speed.
    floor_frac: float = 0.0


@dataclass(eq=False, kw_only=True)
class CarbonHook:
    """Flexible jobs and the grid signal for one running daemon. Units: W, s."""

    section: CarbonSection
    site: str
    topology: Topology
    base_dir: Path | None = None
    forecast: Forecast = field(default_factory=Forecast)
    jobs: dict[str, _Job] = field(default_factory=dict)
    rejected: int = 0
    slot: int = -1
    _settings: CarbonSettings = field(init=False)

    def __post_init__(self) -> None:
        self._settings = self.section.settings()
        path = self.section.signal_file
        if path is not None:
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path
            t, v = load_signal_file(path)
            # Each row holds until the next; the last for as long as the one before it.
            self.forecast.starts, self.forecast.values = t, v
            self.forecast.end_s = float(t[-1] + (t[-1] - t[-2]))

    @property
    def topics(self) -> tuple[str, ...]:
        topics = [jobs_filter(self.site)]
        if self.section.mqtt_signal:
            topics.append(signal_topic(self.site))
        return tuple(topics)

    def set_topology(self, topology: Topology) -> None:
        """A reload changed the fleet: jobs are re-resolved against it (dropped if they no
        longer fit)."""
        self.topology = topology
        for name, job in list(self.jobs.items()):
            rows = self._rows(job.report)
            if rows is None:
                del self.jobs[name]
            else:
                job.rows = rows
                job.min_frac = self._min_frac(rows)

    # -------------------------------------------------------------------------- messages
    def handle(self, topic: str, payload: bytes, *, now_s: float) -> bool:
        """Take a job or signal message; False for other topics. Bad messages are counted."""
        prefix = f"{TOPIC_ROOT}/{self.site}/jobs/"
        if topic.startswith(prefix):
            self._job_message(topic[len(prefix) :], payload, now_s)
            return True
        if self.section.mqtt_signal and topic == signal_topic(self.site):
            try:
                msg = decode_signal(payload)
            except ProtocolError:
                self.rejected += 1
                return True
            self.forecast.merge(msg.start_ts, msg.slot_s, msg.values)
            self.slot = -1  # re-plan at the next tick
            return True
        return False

    def take_forecast(self, start_ts: float, slot_s: float, values: tuple[float, ...]) -> None:
        """A forecast from another source (an OpenADR ELECTRICITY_PRICE event)."""
        if values and slot_s > 0 and all(math.isfinite(v) for v in values):
            self.forecast.merge(start_ts, slot_s, values[:MAX_FORECAST_SLOTS])
            self.slot = -1
        else:
            self.rejected += 1

    def routed(
        self, inner: Callable[[str, bytes], bool], *, clock: Callable[[], float]
    ) -> Callable[[str, bytes], bool]:
        def handle(topic: str, payload: bytes) -> bool:
            return self.handle(topic, payload, now_s=clock()) or inner(topic, payload)

        return handle

    def _job_message(self, name: str, payload: bytes, now_s: float) -> None:
        if not name or len(name) > 128 or not set(name) <= JOB_ID_CHARS:
            self.rejected += 1
            return
        if not payload:  # the scheduler cleared the retained message: the job is gone
            self.jobs.pop(name, None)
            return
        try:
            report = decode_job(payload, job=name)
        except ProtocolError:
            self.rejected += 1
            return
        if not report.flexible:
            # No deadline and no work owed: nothing to shift (a synchronous job reported only to
            # be paced, or one whose work is done). A job that was flexible stops being shaped.
            self.jobs.pop(name, None)
            return
        rows = self._rows(report)
        if rows is None or (name not in self.jobs and len(self.jobs) >= MAX_JOBS):
            self.rejected += 1
            return
        job = self.jobs.get(name)
        if job is None:
            job = _Job(report=report, rows=rows, received_at_s=now_s, min_frac=self._min_frac(rows))
            job.floor_frac = self._floor_frac(report.tier, job.min_frac)
            job.anchor_ts, job.anchor_owed_s = report.ts, report.owed_s
            self.jobs[name] = job
            self.slot = -1
            return
        if report.ts <= job.report.ts:
            return  # a replay or an older report: the newer one stands
        if report.tier != job.report.tier or report.gpus != job.report.gpus:
            job.min_frac = self._min_frac(rows)
            job.floor_frac = self._floor_frac(report.tier, job.min_frac)
        job.report, job.rows, job.received_at_s = report, rows, now_s
        self._track(job)

    def _rows(self, report: JobReport) -> NDArray[np.int64] | None:
        return job_rows(self.topology, report.gpus)

    def _floor_frac(self, tier: int, min_frac: float) -> float:
        speed = min(1.0 - self.section.tolerances[tier] + SPEED_GUARD, 1.0)
        need = float(np.interp(speed, FLOOR_CURVE_SPEED, FLOOR_CURVE_POWER))
        return min(max(need, min_frac), 1.0)

    def _min_frac(self, rows: NDArray[np.int64]) -> float:
        topo = self.topology
        return float(np.max(topo.gpu_min_cap_w[rows] / topo.gpu_max_cap_w[rows]))

    # -------------------------------------------------------------------------- control
    def _track(self, job: _Job) -> None:
        """Measured speed from the fall of `owed_s`; steer the cap fraction onto the plan."""
        span = job.report.ts - job.anchor_ts
        if span < self.section.track_s:
            return
        job.measured = max(job.anchor_owed_s - job.report.owed_s, 0.0) / span
        tol = self.section.tolerances[job.report.tier]
        if job.planned < 1.0 and job.measured < 1.0 - tol:
            # Slower than the tier allows at this cap: never go this low again for this job.
            job.floor_frac = min(max(job.floor_frac, job.frac * 1.1), 1.0)
        job.frac = float(
            track_power_frac(
                np.array([job.frac]),
                planned_speed=np.array([job.planned]),
                measured_speed=np.array([job.measured]),
                min_speed=np.array([1.0 - tol]),
                min_frac=np.array([job.floor_frac]),
                gamma=self.section.gamma,
            )[0]
        )
        job.anchor_ts, job.anchor_owed_s = job.report.ts, job.report.owed_s

    def shaped(self, job: _Job, now_s: float) -> bool:
        rep = job.report
        return (
            rep.tier in self.section.shift_tiers
            and rep.owed_s > 0
            and now_s < rep.deadline_ts
            and now_s - job.received_at_s <= self.section.job_timeout_s
        )

    def _plan(self, now_s: float) -> None:
        slot_s = self.section.slot_s
        for job in self.jobs.values():
            rep = job.report
            forecast = (
                self.forecast.slots(now_s, rep.deadline_ts, slot_s)
                if self.shaped(job, now_s)
                else None
            )
            if forecast is None:
                job.planned = 1.0
                continue
            left_s = rep.deadline_ts - now_s
            job.planned = job_speed_now(
                forecast,
                owed_s=rep.owed_s * forecast.size * slot_s / max(left_s, 1e-9),
                slot_s=slot_s,
                tolerance=self.section.tolerances[rep.tier],
                settings=self._settings,
            )

    def ceilings(self, now_s: float) -> FloatArray | None:
        """Per-GPU cap ceilings for this tick (max caps where nothing is shaped); None when no
        job is shaped. Re-plans at each slot boundary and whenever jobs or forecast change."""
        slot = math.floor(now_s / self.section.slot_s)
        if slot != self.slot:
            self.slot = slot
            self._plan(now_s)
        topo = self.topology
        ceiling: FloatArray | None = None
        for job in self.jobs.values():
            if not self.shaped(job, now_s) or job.planned >= 1.0 - 1e-9:
                job.frac = 1.0
                continue
            if ceiling is None:
                ceiling = topo.gpu_max_cap_w.copy()
            rows = job.rows
            frac = max(job.frac, job.floor_frac)
            ceiling[rows] = np.clip(
                frac * topo.gpu_max_cap_w[rows], topo.gpu_min_cap_w[rows], ceiling[rows]
            )
        return ceiling


#: Every family `CarbonCollector` may yield, with its type (for `describe`).
CARBON_FAMILIES = (
    ("grid_signal", "gauge"),
    ("flex_jobs", "gauge"),
    ("flex_job_speed_ratio", "gauge"),
    ("flex_job_cap_ratio", "gauge"),
    ("carbon_messages_rejected", "counter"),
)


class CarbonCollector(Collector):
    """`rheostat_grid_signal`, `rheostat_flex_jobs` and per-job planned and measured speeds."""

    def __init__(self, hook: CarbonHook, *, clock: Callable[[], float]) -> None:
        self.hook = hook
        self.clock = clock

    def describe(self) -> list[Metric]:
        return describe_families(CARBON_FAMILIES)

    def collect(self) -> Iterator[Metric]:
        hook, site, now = self.hook, self.hook.site, self.clock()
        value = hook.forecast.at(now)
        signal = GaugeMetricFamily(
            "rheostat_grid_signal",
            "Grid signal now (kg CO2/MWh or price per MWh, as `kind` says); absent without one.",
            labels=["site", "kind"],
        )
        if value is not None and math.isfinite(value):
            signal.add_metric([site, hook.section.signal], value)
        yield signal
        shaped = [j for j in hook.jobs.values() if hook.shaped(j, now)]
        count = GaugeMetricFamily(
            "rheostat_flex_jobs", "Flexible jobs known and shaped.", labels=["site", "state"]
        )
        count.add_metric([site, "known"], float(len(hook.jobs)))
        count.add_metric([site, "shaped"], float(len(shaped)))
        yield count
        speed = GaugeMetricFamily(
            "rheostat_flex_job_speed_ratio",
            "A flexible job's speed against full speed: planned, and measured from progress.",
            # Not `job`: Prometheus would rename it `exported_job` beside the scrape's own label.
            labels=["site", "flex_job", "kind"],
        )
        frac = GaugeMetricFamily(
            "rheostat_flex_job_cap_ratio",
            "A flexible job's cap ceiling as a share of its GPUs' max caps.",
            labels=["site", "flex_job"],
        )
        for name, job in hook.jobs.items():
            for kind, value in (("planned", job.planned), ("measured", job.measured)):
                if math.isfinite(value):  # no progress measured yet: no series
                    speed.add_metric([site, name, kind], value)
            frac.add_metric([site, name], job.frac)
        yield speed
        yield frac
        rejected = CounterMetricFamily(
            "rheostat_carbon_messages_rejected",
            "Job and signal messages rejected.",
            labels=["site"],
        )
        rejected.add_metric([site], float(hook.rejected))
        yield rejected
