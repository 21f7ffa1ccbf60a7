"""The scheduler's synchronous jobs in the daemon: reports, GPU rows, what carbon makes of them."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.carbon import CarbonHook, CarbonSection
from controller.jobs import SyncJobs
from controller.metrics.jobs import SyncJobsCollector
from controller.wire import GpuRange, JobReport, decode_job, encode_job, job_topic
from policies.errors import ProtocolError
from policies.topology import generate_topology

T0 = 1_764_300_000.0
SITE = "lab"
TOPO = generate_topology(96, a100_share=0.0)  # racks r00000..r00002 of 32 H100s


def report(
    ts: float = T0, *, sync: bool = True, ranges: tuple[tuple[str, int, int], ...] = ()
) -> bytes:
    gpus = ranges or (("r00000", 16, 16), ("r00001", 0, 16))
    return encode_job(
        JobReport(
            job="pretrain",
            ts=ts,
            tier=1,
            gpus=tuple(GpuRange(rack=r, first=f, count=c) for r, f, c in gpus),
            flexible=False,
            sync=sync,
        )
    )


def jobs() -> SyncJobs:
    return SyncJobs(site=SITE, topology=TOPO)


def test_a_sync_report_needs_no_deadline_and_round_trips() -> None:
    raw = report()
    assert b"deadline_ts" not in raw
    assert orjson.loads(raw)["sync"] is True
    decoded = decode_job(raw, job="pretrain")
    assert decoded.sync
    assert not decoded.flexible
    assert decoded.gpus == (
        GpuRange(rack="r00000", first=16, count=16),
        GpuRange(rack="r00001", first=0, count=16),
    )


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"sync": 1}, "sync must be true or false"),
        ({"deadline_ts": T0 + 60}, "come together"),
        ({"owed_s": 60.0}, "come together"),
        ({"paced": True}, "unknown keys"),
    ],
)
def test_bad_job_reports_are_refused(obj: dict[str, object], match: str) -> None:
    base = orjson.loads(report())
    with pytest.raises(ProtocolError, match=match):
        decode_job(orjson.dumps(base | obj), job="pretrain")


def test_reported_gpus_become_one_job_index() -> None:
    j = jobs()
    assert j.sync_job() is None  # nothing known: the decision is not asked to pace
    assert j.handle(job_topic(SITE, "pretrain"), report())
    index = j.sync_job()
    assert index is not None
    expected = np.full(96, -1, np.int32)
    expected[16:48] = 0
    np.testing.assert_array_equal(index, expected)
    assert j.handle(job_topic(SITE, "sweep"), report(ranges=(("r00002", 0, 32),)))
    index = j.sync_job()
    assert index is not None
    assert set(np.unique(index[16:48])) | set(np.unique(index[64:])) == {0, 1}
    assert len(set(np.unique(index[16:48])) & set(np.unique(index[64:]))) == 0


def test_removal_replay_and_a_job_that_stops_being_synchronous() -> None:
    j = jobs()
    topic = job_topic(SITE, "pretrain")
    j.handle(topic, report(ts=T0 + 10))
    j.handle(topic, report(ts=T0 + 5, ranges=(("r00002", 0, 8),)))  # older: ignored
    index = j.sync_job()
    assert index is not None
    assert index[16] == 0
    assert index[64] == -1
    j.handle(topic, report(ts=T0 + 20, sync=False))
    assert j.sync_job() is None
    j.handle(topic, report(ts=T0 + 30))
    j.handle(topic, b"")  # the scheduler cleared its retained report
    assert j.sync_job() is None
    assert j.rejected == 0


@pytest.mark.parametrize(
    "ranges",
    [
        (("r00009", 0, 8),),  # no such rack
        (("r00002", 24, 16),),  # past the rack's 32 GPUs
        (("r00000", 20, 8),),  # GPUs the first job holds
    ],
)
def test_reports_that_do_not_resolve_are_counted_and_dropped(
    ranges: tuple[tuple[str, int, int], ...],
) -> None:
    j = jobs()
    j.handle(job_topic(SITE, "pretrain"), report())
    before = j.sync_job()
    assert before is not None
    before = before.copy()
    assert j.handle(job_topic(SITE, "other"), report(ranges=ranges))
    assert j.rejected == 1
    np.testing.assert_array_equal(j.sync_job(), before)
    assert j.handle(job_topic(SITE, "bad id!"), report())
    assert j.handle(job_topic(SITE, "junk"), b"{not json")
    assert j.rejected == 3
    metrics = generate_latest(registry(j)).decode()
    assert f'rheostat_job_reports_rejected_total{{site="{SITE}"}} 3.0' in metrics
    assert f'rheostat_sync_jobs{{site="{SITE}"}} 1.0' in metrics
    assert f'rheostat_sync_job_gpus{{site="{SITE}"}} 32.0' in metrics


def registry(j: SyncJobs) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SyncJobsCollector(j))
    return reg


def test_a_reload_resolves_jobs_again_and_drops_what_no_longer_fits() -> None:
    j = jobs()
    j.handle(job_topic(SITE, "pretrain"), report())
    j.handle(job_topic(SITE, "sweep"), report(ranges=(("r00002", 0, 32),)))
    j.set_topology(generate_topology(64, a100_share=0.0))  # rack r00002 is gone
    index = j.sync_job()
    assert index is not None
    assert index.shape == (64,)
    assert set(j.reports) == {"pretrain"}
    assert np.count_nonzero(index >= 0) == 32


def test_job_messages_reach_carbon_too_and_others_pass_through() -> None:
    j = jobs()
    seen: list[str] = []

    def inner(topic: str, payload: bytes) -> bool:
        seen.append(topic)
        return True

    forwarded = j.routed(inner, forward=True)
    alone = j.routed(inner, forward=False)
    forwarded(job_topic(SITE, "pretrain"), report())
    alone(job_topic(SITE, "other"), report(ranges=(("r00002", 0, 8),)))
    alone("rheostat/v1/lab/telemetry/r00000", b"{}")
    assert seen == [job_topic(SITE, "pretrain"), "rheostat/v1/lab/telemetry/r00000"]
    assert set(j.reports) == {"pretrain", "other"}


def test_carbon_shifts_only_jobs_that_owe_work() -> None:
    hook = CarbonHook(
        section=CarbonSection.model_validate({"slot_s": 60.0}), site=SITE, topology=TOPO
    )
    hook.handle(job_topic(SITE, "pretrain"), report(), now_s=T0)
    assert hook.jobs == {}
    assert hook.rejected == 0
    owed = JobReport(
        job="sweep",
        ts=T0,
        tier=3,
        gpus=(GpuRange(rack="r00002", first=0, count=32),),
        deadline_ts=T0 + 3600,
        owed_s=1800.0,
        sync=True,
    )
    hook.handle(job_topic(SITE, "sweep"), encode_job(owed), now_s=T0)
    assert set(hook.jobs) == {"sweep"}
    # The same job reported again without work owed is no longer shifted.
    hook.handle(job_topic(SITE, "sweep"), report(ts=T0 + 1), now_s=T0 + 1)
    assert hook.jobs == {}
