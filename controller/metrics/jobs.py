"""The scheduler's synchronous jobs as metrics: how many are paced, over how many GPUs, and how
many reports were dropped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from controller.jobs import SyncJobs
from controller.metric_families import Family, describe_families

SYNC_JOBS = Family(
    "sync_jobs",
    "gauge",
    "Synchronous jobs the scheduler reported, paced to their slowest GPU.",
    ("site",),
)
SYNC_JOB_GPUS = Family("sync_job_gpus", "gauge", "GPUs in reported synchronous jobs.", ("site",))
REPORTS_REJECTED = Family(
    "job_reports_rejected",
    "counter",
    "Job reports dropped: undecodable, unknown GPUs, or GPUs another job holds.",
    ("site",),
)
FAMILIES: tuple[Family, ...] = (SYNC_JOBS, SYNC_JOB_GPUS, REPORTS_REJECTED)


class SyncJobsCollector(Collector):
    """`rheostat_sync_jobs`, `rheostat_sync_job_gpus` and `rheostat_job_reports_rejected`."""

    def __init__(self, jobs: SyncJobs) -> None:
        self.jobs = jobs

    def describe(self) -> list[Metric]:
        return describe_families(FAMILIES)

    def collect(self) -> Iterator[Metric]:
        jobs, site = self.jobs, self.jobs.site
        yield SYNC_JOBS.one([site], float(len(jobs.reports)))
        yield SYNC_JOB_GPUS.one([site], float(jobs.n_gpus))
        rejected = REPORTS_REJECTED.counter()
        rejected.add_metric([site], float(jobs.rejected))
        yield rejected
