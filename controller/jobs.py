"""The scheduler's synchronous jobs, for the decision core to pace (`policies.pacing.pace_ceiling`).

A data-parallel training job steps at its slowest GPU. Which GPUs step together is something only
the cluster scheduler knows, so it says so in the job reports it already publishes for carbon
shifting (`controller/carbon.py`, retained on `rheostat/v1/<site>/jobs/<job>`) with
`"sync": true`. This part is always on: it needs no policy section, keeps the reports of
synchronous jobs, resolves their GPU ranges against the topology and hands the decision one
array, the job index of every GPU (-1 in none). A report that cannot be decoded or resolved
(unknown rack, a range past a rack's GPUs, a GPU another synchronous job already holds) is
counted and dropped; the job's previous report, if any, stays in force until an empty retained
message removes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog
from numpy.typing import NDArray

from controller.carbon import MAX_JOBS, job_rows
from controller.wire import (
    JOB_ID_CHARS,
    TOPIC_ROOT,
    JobReport,
    MessageRejections,
    decode_job,
    jobs_filter,
)
from policies.errors import ProtocolError
from policies.topology import Topology

log = structlog.get_logger("rheostat.jobs")


@dataclass(eq=False, kw_only=True)
class SyncJobs:
    """Synchronous jobs reported by the scheduler, as per-GPU job indices for one topology."""

    site: str
    topology: Topology
    #: Most jobs held at once (the policy's `telemetry.max_jobs`); more are counted and dropped.
    max_jobs: int = MAX_JOBS
    #: Where refusals are counted by reason (the daemon's `rheostat_messages_rejected_total`).
    rejections: MessageRejections | None = None
    reports: dict[str, JobReport] = field(default_factory=dict)
    rejected: int = 0
    _rows: dict[str, NDArray[np.int64]] = field(default_factory=dict)
    _index: NDArray[np.int32] | None = None
    _dirty: bool = True

    @property
    def topics(self) -> tuple[str, ...]:
        return (jobs_filter(self.site),)

    def set_topology(self, topology: Topology) -> None:
        """A reload changed the fleet: every job is resolved again, dropped if it no longer fits."""
        self.topology = topology
        self._rows.clear()
        for name, report in list(self.reports.items()):
            rows = self._resolve(report, skip=name)
            if rows is None:
                del self.reports[name]
                log.warning("synchronous job no longer fits the topology: dropped", job=name)
            else:
                self._rows[name] = rows
        self._dirty = True

    def handle(self, topic: str, payload: bytes) -> bool:
        """Take a job message; False for any other topic. Bad reports are counted."""
        prefix = f"{TOPIC_ROOT}/{self.site}/jobs/"
        if not topic.startswith(prefix):
            return False
        name = topic[len(prefix) :]
        if not name or len(name) > 128 or not set(name) <= JOB_ID_CHARS:
            self.rejected += 1
            return True
        if not payload:  # the scheduler cleared the retained message: the job is gone
            self._drop(name)
            return True
        try:
            report = decode_job(payload, job=name)
        except ProtocolError as exc:
            self.rejected += 1
            if self.rejections is not None:
                self.rejections.count("job", exc)
            log.warning("job report rejected", job=name, reason=str(exc))
            return True
        old = self.reports.get(name)
        if old is not None and report.ts <= old.ts:
            return True  # a replay or an older report: the newer one stands
        if not report.sync:
            self._drop(name)  # no longer (or never) synchronous
            return True
        if old is None and len(self.reports) >= self.max_jobs:
            self.rejected += 1
            return True
        rows = self._resolve(report, skip=name)
        if rows is None:
            self.rejected += 1
            log.warning("job report rejected: GPUs unknown or held by another job", job=name)
            return True
        self.reports[name], self._rows[name] = report, rows
        self._dirty = True
        return True

    def routed(
        self, inner: Callable[[str, bytes], bool], *, forward: bool
    ) -> Callable[[str, bytes], bool]:
        """`inner` with job messages seen here first; `forward` passes them on (to carbon)."""

        def handle(topic: str, payload: bytes) -> bool:
            if self.handle(topic, payload) and not forward:
                return True
            return inner(topic, payload)

        return handle

    @property
    def n_gpus(self) -> int:
        """GPUs in the known synchronous jobs."""
        return sum(int(r.size) for r in self._rows.values())

    def sync_job(self) -> NDArray[np.int32] | None:
        """Per GPU, its synchronous job's index (-1: none); None while no job is known."""
        if not self._rows:
            return None
        if self._dirty or self._index is None:
            index = np.full(self.topology.n_gpus, -1, dtype=np.int32)
            for k, name in enumerate(sorted(self._rows)):
                index[self._rows[name]] = k
            self._index, self._dirty = index, False
        return self._index

    def _drop(self, name: str) -> None:
        if self.reports.pop(name, None) is not None:
            self._rows.pop(name, None)
            self._dirty = True

    def _resolve(self, report: JobReport, *, skip: str) -> NDArray[np.int64] | None:
        rows = job_rows(self.topology, report.gpus)
        if rows is None:
            return None
        # A GPU steps with one job only: a report overlapping another job's GPUs is wrong.
        for name, other in self._rows.items():
            if name != skip and np.intersect1d(rows, other, assume_unique=True).size:
                return None
        return rows
