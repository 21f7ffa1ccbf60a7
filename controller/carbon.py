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

The algorithm is `policies.carbon_session.CarbonSession`, the one the simulator's closed loop
runs too: this hook decodes the messages into its reports and forecast, keeps what the metrics
show, and gives its stage (`CarbonStage`) to the tick. Ceilings only ever lower the core's caps,
so every hard limit still holds; without a forecast, or while a job's reports are stale, the job
runs unshaped.
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
from policies.carbon_session import CarbonSession, CarbonStage, FlexJob, Forecast
from policies.errors import ConfigError, ProtocolError
from policies.topology import Topology

FloatArray = NDArray[np.float64]

__all__ = ["CarbonCollector", "CarbonHook", "CarbonSection", "Forecast", "job_rows"]

#: Jobs one site may report at once: bounds memory against a runaway publisher.
MAX_JOBS = 10_000


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
class CarbonHook:
    """Flexible jobs and the grid signal for one running daemon. Units: W, s."""

    section: CarbonSection
    site: str
    topology: Topology
    base_dir: Path | None = None
    #: The newest report of each job the session knows (its GPU ranges, to re-resolve them).
    reports: dict[str, JobReport] = field(default_factory=dict)
    rejected: int = 0
    session: CarbonSession = field(init=False)
    stage: CarbonStage = field(init=False)

    def __post_init__(self) -> None:
        forecast = Forecast(max_slots=MAX_FORECAST_SLOTS)
        path = self.section.signal_file
        if path is not None:
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path
            t, v = load_signal_file(path)
            # Each row holds until the next; the last for as long as the one before it.
            forecast.starts, forecast.values = t, v
            forecast.end_s = float(t[-1] + (t[-1] - t[-2]))
        self.session = CarbonSession(
            settings=self.section.settings(), topology=self.topology, forecast=forecast
        )
        self.stage = CarbonStage(self.session)

    @property
    def forecast(self) -> Forecast:
        return self.session.forecast

    @property
    def jobs(self) -> dict[str, FlexJob]:
        return self.session.jobs

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

        def rows_of(name: str) -> NDArray[np.int64] | None:
            return job_rows(topology, self.reports[name].gpus)

        self.session.set_topology(topology, rows_of)
        for name in set(self.reports) - set(self.session.jobs):
            del self.reports[name]

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
            self.session.take_forecast(msg.start_ts, msg.slot_s, msg.values)
            return True
        return False

    def take_forecast(self, start_ts: float, slot_s: float, values: tuple[float, ...]) -> None:
        """A forecast from another source (an OpenADR ELECTRICITY_PRICE event)."""
        if values and slot_s > 0 and all(math.isfinite(v) for v in values):
            self.session.take_forecast(start_ts, slot_s, values[:MAX_FORECAST_SLOTS])
        else:
            self.rejected += 1

    def ceilings(self, now_s: float) -> FloatArray | None:
        """Per-GPU cap ceilings for this tick; None when no job is shaped."""
        return self.session.ceilings(now_s)

    def _job_message(self, name: str, payload: bytes, now_s: float) -> None:
        if not name or len(name) > 128 or not set(name) <= JOB_ID_CHARS:
            self.rejected += 1
            return
        if not payload:  # the scheduler cleared the retained message: the job is gone
            self._drop(name)
            return
        try:
            report = decode_job(payload, job=name)
        except ProtocolError:
            self.rejected += 1
            return
        if not report.flexible:
            # No deadline and no work owed: nothing to shift (a synchronous job reported only to
            # be paced, or one whose work is done). A job that was flexible stops being shaped.
            self._drop(name)
            return
        rows = job_rows(self.topology, report.gpus)
        if rows is None or (name not in self.reports and len(self.reports) >= MAX_JOBS):
            self.rejected += 1
            return
        known = self.reports.get(name)
        if known is not None and report.ts <= known.ts:
            return  # a replay or an older report: the newer one stands
        self.reports[name] = report
        self.session.report(
            name,
            ts=report.ts,
            tier=report.tier,
            deadline_ts=report.deadline_ts,
            owed_s=report.owed_s,
            rows=rows,
            now_s=now_s,
        )

    def _drop(self, name: str) -> None:
        self.reports.pop(name, None)
        self.session.drop(name)


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
        shaped = [j for j in hook.jobs.values() if hook.session.shaped(j, now)]
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
