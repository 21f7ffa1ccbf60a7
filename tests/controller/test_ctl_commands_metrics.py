"""Command selection (deadband, TTL refresh, stale racks, lowering first) and the collector."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from controller import wire
from controller.daemon import build_runtime
from controller.metrics.rheostat import RheostatCollector
from controller.policy_file import parse_policy
from policies.pipeline import decide

POLICY = parse_policy(
    "site: {name: t, topology: {generate: {gpus: 96}}}\n"
    "control: {tick_period_s: 1, command_ttl_s: 10, refresh_frac: 0.5}\n"
    "capping: {deadband_w: 10}\n",
    source="t.yaml",
)


def _decide(rt, now_s: float):  # type: ignore[no-untyped-def]
    snapshot = rt.fleet.copy()
    stale = snapshot.stale_racks(now_s, 5.0)
    decision, state = decide(
        POLICY.topology,
        snapshot,
        tier=rt.tier_table[snapshot.workload_class],
        limits=rt.limits,
        settings=POLICY.config.policy_settings(),
        state=rt.decision_state,
        now_s=now_s,
        stale_rack=stale,
    )
    rt.decision, rt.decision_state, rt.stale_rack = decision, state, stale
    return decision, stale


def test_commands_follow_deadband_refresh_and_staleness() -> None:
    rt = build_runtime(POLICY, clock=lambda: 100.0, version="t")
    book = rt.book
    decision, stale = _decide(rt, 100.0)
    assert stale.all()
    # blind racks are commanded too (never raised by the decision): it may reach them
    assert sorted(book.due(decision, now_s=100.0, stale_rack=stale).tolist()) == [0, 1, 2]
    fresh = np.zeros(3, bool)
    racks = book.due(decision, now_s=100.0, stale_rack=fresh)
    assert sorted(racks.tolist()) == [0, 1, 2]  # never sent before
    sent = book.build(decision, racks, now_s=100.0)
    cmd = wire.decode_command(sent[0][1], rack=sent[0][0])
    assert cmd.ttl_s == 10.0
    assert cmd.n_gpus == 32
    assert book.due(decision, now_s=101.0, stale_rack=fresh).size == 0  # nothing changed
    # a change inside the deadband is not sent; one beyond it goes to that rack only
    moved = np.array(book.sent_cap_w)
    moved[40] -= 5.0
    nudged = type(decision)(**{**_fields(decision), "cap_w": moved})
    assert book.due(nudged, now_s=101.0, stale_rack=fresh).size == 0
    moved[40] -= 20.0
    lowered = type(decision)(**{**_fields(decision), "cap_w": moved})
    assert book.due(lowered, now_s=101.0, stale_rack=fresh).tolist() == [1]
    # after refresh_frac of the TTL every rack is refreshed
    assert book.due(decision, now_s=105.0, stale_rack=fresh).size == 3
    # lowering racks go first
    raised = moved.copy()
    raised[0] = book.sent_cap_w[0] - 50.0
    raised[70] = min(book.sent_cap_w[70] + 50.0, 700.0)
    mixed = type(decision)(**{**_fields(decision), "cap_w": raised})
    order = book.due(mixed, now_s=101.0, stale_rack=fresh).tolist()
    assert order[:2] == [0, 1]
    seqs = [wire.decode_command(p).seq for _, p in book.build(mixed, np.array(order), now_s=101.0)]
    assert all(s > cmd.seq for s in seqs)


def _fields(decision):  # type: ignore[no-untyped-def]
    return {name: getattr(decision, name) for name in decision.__slots__}


def _scrape(rt) -> dict[str, float]:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RheostatCollector(rt, clock=lambda: 100.0))
    samples: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def test_collector_exports_the_contract_names() -> None:
    rt = build_runtime(POLICY, clock=lambda: 100.0, version="9.9")
    rt.fleet.rack_power_w[:] = [10000.0, 12000.0, 0.0]
    rt.fleet.rack_last_seen_s[:2] = 99.0
    _decide(rt, 100.0)
    s = _scrape(rt)
    assert s['rheostat_build_info{version="9.9"}'] == 1.0
    assert s['rheostat_site_power_watts{site="t"}'] == 22000.0
    limit = s['rheostat_site_limit_watts{site="t"}']
    assert s['rheostat_site_headroom_watts{site="t"}'] == limit - 22000.0
    assert s['rheostat_stale_racks{site="t"}'] == 1.0
    assert s['rheostat_rack_stale{rack="r00002",row="row000",site="t"}'] == 1.0
    rating = s['rheostat_rack_breaker_rating_watts{rack="r00000",row="row000",site="t"}']
    assert s['rheostat_rack_breaker_utilization_ratio{rack="r00000",row="row000",site="t"}'] == (
        10000.0 / rating
    )
    assert s['rheostat_rack_limit_watts{rack="r00000",row="row000",site="t"}'] == rating * 0.8
    assert s['rheostat_gpus{site="t"}'] == 96.0
    assert sum(s[f'rheostat_tier_gpus{{site="t",tier="{t}"}}'] for t in range(4)) == 96.0
    for name in (
        'rheostat_row_power_watts{row="row000",site="t"}',
        'rheostat_row_headroom_watts{row="row000",site="t"}',
        'rheostat_tier_cap_watts{site="t",tier="1"}',
        'rheostat_tier_sm_clock_max_hertz{site="t",tier="1"}',
        'rheostat_infeasible_groups{level="rack",site="t"}',
        "rheostat_tick_duration_seconds_count",
        "rheostat_ticks_total",
        "rheostat_tick_overruns_total",
        "rheostat_telemetry_messages_total",
        'rheostat_telemetry_rejected_total{reason="stale_sequence"}',
        "rheostat_telemetry_backlog",
        "rheostat_commands_sent_total",
        "rheostat_protective_cuts_total",
        "rheostat_mqtt_connected",
        "rheostat_mqtt_reconnects_total",
        "rheostat_policy_last_reload_successful",
        'rheostat_policy_reloads_total{result="failure"}',
        'rheostat_site_energy_joules_total{site="t"}',
        'rheostat_dvfs_saving_watts{site="t"}',
        'rheostat_dr_active{site="t"}',
    ):
        assert name in s, name
    # No tick has run and no daemon loaded the policy: those times are unknown, so their series
    # are absent rather than NaN.
    assert "rheostat_last_tick_timestamp_seconds" not in s
    assert "rheostat_policy_last_reload_success_timestamp_seconds" not in s
    assert all(math.isfinite(v) for v in s.values())
    assert not any(k.startswith("rheostat_gpu_") for k in s)  # per-GPU series are opt-in
