"""Flexible jobs against a grid signal in the daemon: messages, forecast, plans and cap ceilings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.carbon import CarbonCollector, CarbonHook, CarbonSection, Forecast
from controller.policy_file import parse_policy
from controller.wire import (
    GpuRange,
    JobReport,
    SignalMessage,
    decode_job,
    decode_signal,
    encode_job,
    encode_signal,
    job_topic,
    signal_topic,
)
from policies.errors import ConfigError, ConfigErrors, ProtocolError
from policies.topology import generate_topology

T0 = 1_764_300_000.0
SITE = "lab"
TOPO = generate_topology(64, a100_share=0.0)  # racks r00000, r00001 of 32 H100s


def hook(**section: object) -> CarbonHook:
    values: dict[str, object] = {"slot_s": 60.0, "track_s": 30.0} | section
    return CarbonHook(section=CarbonSection.model_validate(values), site=SITE, topology=TOPO)


def job(ts: float, owed_s: float, *, tier: int = 3, deadline: float = T0 + 3600) -> bytes:
    report = JobReport(
        job="sweep",
        ts=ts,
        tier=tier,
        deadline_ts=deadline,
        owed_s=owed_s,
        gpus=(GpuRange(rack="r00001", first=0, count=32),),
    )
    return encode_job(report)


def signal(values: list[float], start: float = T0, slot_s: float = 60.0) -> bytes:
    return encode_signal(
        SignalMessage(ts=start, start_ts=start, slot_s=slot_s, values=tuple(values))
    )


def test_messages_round_trip() -> None:
    msg = decode_signal(signal([400.0, 100.0]))
    assert msg.values == (400.0, 100.0)
    assert msg.slot_s == 60.0
    report = decode_job(job(T0, 1800.0), job="sweep")
    assert report.tier == 3
    assert report.gpus == (GpuRange(rack="r00001", first=0, count=32),)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"[1]", "not a JSON object"),
        (b'{"v": 2, "ts": 1, "start_ts": 1, "slot_s": 60, "values": [1]}', "expected 1"),
        (b'{"v": 1, "ts": 1, "start_ts": 1, "slot_s": 60, "values": []}', "list of 1"),
        (b'{"v": 1, "ts": 1, "start_ts": 1, "slot_s": 0.1, "values": [1]}', "slot_s"),
        (b'{"v": 1, "ts": 1, "start_ts": 1, "slot_s": 60, "values": ["x"]}', "finite"),
        (b'{"v": 1, "ts": 1, "start_ts": 1, "slot_s": 60, "values": [1], "x": 0}', "unknown"),
    ],
)
def test_bad_signal_messages_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_signal(payload)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"tier": 7}, "tier"),
        ({"tier": True}, "tier"),
        ({"owed_s": -1.0}, "owed_s"),
        ({"gpus": []}, "non-empty"),
        ({"gpus": [{"rack": "r00001", "first": 0}]}, "exactly rack, first and count"),
        ({"gpus": [{"rack": "r00001", "first": -1, "count": 2}]}, r"first outside \[0, "),
        ({"gpus": [{"rack": "r00001", "first": 0, "count": 0}]}, r"count outside \[1, "),
        ({"gpus": [{"rack": "r00001", "first": 2**63, "count": 1}]}, "first outside"),
        ({"ts": 1e300}, "ts="),
    ],
)
def test_bad_job_messages_are_refused(change: dict[str, object], match: str) -> None:
    obj = orjson.loads(job(T0, 100.0)) | change
    with pytest.raises(ProtocolError, match=match):
        decode_job(orjson.dumps(obj), job="sweep")


def test_forecast_merges_and_covers_only_what_it_knows() -> None:
    fc = Forecast()
    assert fc.at(T0) is None
    fc.merge(T0, 60.0, (3.0, 2.0, 1.0))
    assert fc.at(T0 + 61) == 2.0
    assert fc.at(T0 + 180) is None  # past the last slot
    slots = fc.slots(T0, T0 + 180, 60.0)
    assert slots is not None
    assert slots.tolist() == [3.0, 2.0, 1.0]
    assert fc.slots(T0, T0 + 600, 60.0) is None  # a deadline beyond the forecast: no plan
    fc.merge(T0 + 120, 60.0, (9.0, 9.0))  # a newer forecast replaces from its start on
    assert fc.at(T0 + 130) == 9.0
    assert fc.at(T0 + 10) == 3.0


def test_dirty_hours_get_less_power_and_clean_hours_more() -> None:
    h = hook()
    assert h.handle(signal_topic(SITE), signal([500.0] * 30 + [100.0] * 30), now_s=T0)
    # 60 % of the hour's full-speed work is owed; Flex 3 tolerates 50 % slowdown.
    assert h.handle(job_topic(SITE, "sweep"), job(T0, 0.6 * 3600.0), now_s=T0)
    ceiling = h.ceilings(T0)
    assert ceiling is not None
    planned_dirty = h.jobs["sweep"].planned
    assert 0.5 <= planned_dirty < 0.6  # slower while it is dirty, never below the tolerance
    assert np.all(ceiling[:32] == TOPO.gpu_max_cap_w[:32])  # other GPUs untouched
    # Progress as planned; in the clean half the plan speeds the job up.
    owed = 0.6 * 3600.0 - planned_dirty * 1800.0
    h.handle(job_topic(SITE, "sweep"), job(T0 + 1800, owed), now_s=T0 + 1800)
    h.ceilings(T0 + 1800)
    assert h.jobs["sweep"].planned > 0.6
    assert h.jobs["sweep"].planned <= 1.0


def test_measured_progress_steers_the_cap() -> None:
    h = hook()
    h.handle(signal_topic(SITE), signal([500.0] * 60), now_s=T0)
    h.handle(job_topic(SITE, "sweep"), job(T0, 0.6 * 3600.0), now_s=T0)
    assert h.ceilings(T0) is not None
    assert h.jobs["sweep"].frac == 1.0
    # Running at full speed for 30 s while 0.6 is planned: the cap comes down.
    h.handle(job_topic(SITE, "sweep"), job(T0 + 30, 0.6 * 3600.0 - 30.0), now_s=T0 + 30)
    ceiling = h.ceilings(T0 + 30)
    assert ceiling is not None
    frac = h.jobs["sweep"].frac
    assert frac < 0.8
    assert np.allclose(ceiling[32:], frac * 700.0)
    # Measured slower than the tolerance allows: the full correction at once.
    owed = 0.6 * 3600.0 - 30.0 - 0.3 * 30.0
    h.handle(job_topic(SITE, "sweep"), job(T0 + 60, owed), now_s=T0 + 60)
    h.ceilings(T0 + 60)
    assert h.jobs["sweep"].frac > frac * 1.5
    assert h.jobs["sweep"].measured == pytest.approx(0.3)


def test_nothing_is_shaped_without_a_plan_or_a_fresh_report() -> None:
    h = hook(job_timeout_s=120.0)
    h.handle(job_topic(SITE, "sweep"), job(T0, 0.6 * 3600.0), now_s=T0)
    assert h.ceilings(T0) is None  # no forecast: no shaping on a guess
    h.handle(signal_topic(SITE), signal([500.0] * 60), now_s=T0)
    assert h.ceilings(T0) is not None
    # The job's reports stop: its progress cannot be measured, so it runs unshaped.
    assert h.ceilings(T0 + 121) is None
    # A Flex 1 job is never shifted; a cleared retained message removes a job.
    h.handle(job_topic(SITE, "sweep"), job(T0 + 130, 1000.0, tier=1), now_s=T0 + 130)
    assert h.ceilings(T0 + 130) is None
    h.handle(job_topic(SITE, "sweep"), b"", now_s=T0 + 131)
    assert h.jobs == {}


def test_bad_jobs_are_counted_and_change_nothing() -> None:
    h = hook()
    h.handle(job_topic(SITE, "sweep"), job(T0, 100.0), now_s=T0)
    before = h.reports["sweep"]
    for payload in (b"not json", job(T0 + 5, 50.0).replace(b"r00001", b"nope")):
        assert h.handle(job_topic(SITE, "sweep"), payload, now_s=T0 + 5)
    assert h.handle(job_topic(SITE, "bad id!"), job(T0, 1.0), now_s=T0)
    assert h.rejected == 3
    assert h.reports["sweep"] == before
    # An older report (a replay) does not undo a newer one.
    h.handle(job_topic(SITE, "sweep"), job(T0 - 10, 999.0), now_s=T0 + 6)
    assert h.reports["sweep"] == before
    assert not h.handle("rheostat/v1/lab/telemetry/r00000", b"{}", now_s=T0)


def test_metrics_and_signal_file(tmp_path: Path) -> None:
    path = tmp_path / "signal.csv"
    path.write_text(f"unix_s,kg_per_mwh\n{T0},450\n{T0 + 3600},150\n")
    h = CarbonHook(
        section=CarbonSection(signal_file=Path("signal.csv"), slot_s=600.0),
        site=SITE,
        topology=TOPO,
        base_dir=tmp_path,
    )
    assert h.forecast.at(T0 + 10) == 450.0
    assert h.forecast.at(T0 + 3700) == 150.0
    assert h.forecast.at(T0 + 7300) is None
    h.handle(job_topic(SITE, "sweep"), job(T0, 0.5 * 7200.0, deadline=T0 + 7200), now_s=T0)
    assert h.ceilings(T0) is not None
    registry = CollectorRegistry()
    registry.register(CarbonCollector(h, clock=lambda: T0))
    text = generate_latest(registry).decode()
    assert 'rheostat_grid_signal{kind="carbon",site="lab"} 450.0' in text
    assert 'rheostat_flex_jobs{site="lab",state="shaped"} 1.0' in text
    assert 'rheostat_flex_job_speed_ratio{flex_job="sweep",kind="planned",site="lab"}' in text
    bad = tmp_path / "bad.csv"
    bad.write_text("unix_s,v\n2,1\n1,1\n")
    with pytest.raises(ConfigError, match="increase"):
        CarbonHook(section=CarbonSection(signal_file=bad), site=SITE, topology=TOPO)


def test_policy_file_carbon_section() -> None:
    base = "site: {name: a, topology: {generate: {gpus: 8}}}\n"
    ok = parse_policy(base + "carbon: {slot_s: 300, shift_tiers: [3]}\n", source="p.yaml")
    assert ok.config.carbon is not None
    assert ok.config.carbon.shift_tiers == (3,)
    with pytest.raises(ConfigErrors) as info:
        parse_policy(base + "carbon:\n  tolerances: [0.5, 0.1, 0.2, 0.3]\n", source="p.yaml")
    err = str(info.value)
    assert "carbon.tolerances" in err
    assert "p.yaml:3" in err
    assert math.isfinite(ok.config.carbon.slot_s)


def test_floors_keep_each_job_within_its_tolerance() -> None:
    h = hook()
    h.handle(signal_topic(SITE), signal([500.0] * 60), now_s=T0)
    h.handle(job_topic(SITE, "sweep"), job(T0, 0.3 * 3600.0), now_s=T0)
    h.ceilings(T0)
    sweep = h.jobs["sweep"]
    assert sweep.planned == pytest.approx(0.5)  # the plan sits on the tolerance
    # A Flex 3 job tolerates half speed: the floor curve needs ~46 % of TDP for 0.53.
    assert 0.4 < sweep.floor_frac < 0.5
    owed = 0.3 * 3600.0
    for k in range(1, 6):  # full speed, then the tracker pulls the cap down to the floor
        owed -= 30.0
        h.handle(job_topic(SITE, "sweep"), job(T0 + 30 * k, owed), now_s=T0 + 30 * k)
        ceiling = h.ceilings(T0 + 30 * k)
        assert ceiling is not None
        assert np.all(ceiling[32:] >= sweep.floor_frac * 700.0 - 1e-9)
    at_floor = max(sweep.frac, sweep.floor_frac)
    # This job's own curve is slower: 0.4 measured at the floor raises the floor above it.
    owed -= 0.4 * 30.0
    h.handle(job_topic(SITE, "sweep"), job(T0 + 180, owed), now_s=T0 + 180)
    assert sweep.floor_frac > at_floor
