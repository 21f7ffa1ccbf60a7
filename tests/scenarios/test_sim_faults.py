"""Faults in the closed loop: each keeps every breaker safe and behaves as a real site would."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from policies.decision import PolicySettings
from policies.fleet import FleetState
from policies.safe_caps import derive_safe_caps
from simulator.build import build_cluster
from simulator.controllers import controller_topology
from simulator.fast_agents import STALE_EPOCH, STALE_SEQ, FastAgents, RackCommand, acceptance
from simulator.faults import FaultPlan, TelemetryPath
from simulator.loop import RunResult, run
from simulator.scenario import Scenario
from simulator.summary import summarize

TTL_S = 30.0


def site(faults: list[dict[str, Any]], **extra: Any) -> Scenario:
    """Four racks of 32 GPUs whose breakers bind under full load, a contract below full draw."""
    doc: dict[str, Any] = {
        "name": "faults",
        "duration_s": 420,
        "seed": 3,
        "topology": {
            "gpus": 128,
            "a100_share": 0.5,
            "site_limit_frac": 0.8,
            "rack_rating_frac": 1.0,
        },
        "workloads": [
            {"kind": "inference", "name": "chat", "gpus": 32, "tier": 0, "utilization": 0.6},
            {"kind": "training", "name": "pretrain", "gpus": 64, "tier": 1, "iteration_s": 6.0},
            {"kind": "training", "name": "sweep", "gpus": 32, "tier": 3, "iteration_s": 2.0},
        ],
        "controller": {"command_ttl_s": TTL_S},
        "faults": faults,
    }
    return Scenario.model_validate(doc | extra)


def assert_safe(result: RunResult) -> dict[str, Any]:
    """Zero trips and zero seconds over any breaker; returns the summary."""
    summary = summarize(result)
    assert result.cluster.trips == []
    over = summary["seconds_over_limit"]
    assert over["server"] == over["rack"] == over["row"] == 0.0
    return summary


def safe_at(result: RunResult, t0: float, t1: float) -> np.ndarray:
    return np.asarray(result.safe_racks)[int(t0) : int(t1)]


def test_controller_outage_puts_racks_on_safe_caps_after_the_ttl_then_recovers() -> None:
    result = run(site([{"kind": "controller_outage", "at_s": 100, "duration_s": 150}]))
    summary = assert_safe(result)
    assert summary["seconds_over_limit"]["site"] == 0.0
    n_racks = result.cluster.topology.n_racks
    assert np.all(safe_at(result, 0, 100 + TTL_S - 1) == 0)  # commands still live
    assert np.all(safe_at(result, 100 + TTL_S + 1, 250) == n_racks)  # every rack fell back
    assert np.all(safe_at(result, 252, 420) == 0)  # the restarted controller is obeyed
    agents = result.agents
    assert agents is not None
    assert np.all(agents.fallbacks == 1)
    assert {agents.held(rack) for rack in range(n_racks)} == {(0, "sim-2", agents.held_seq[0])}
    # The commands carried the safe caps the daemon derives: all GPUs on them fit every limit.
    cluster = result.cluster
    eff = cluster.params.psu_efficiency
    derived = derive_safe_caps(
        controller_topology(cluster.topology, eff),
        site_limit_w=float(cluster.topology.levels[-1].limit_w[0]) * eff,
        site_margin_frac=PolicySettings().capping.site_margin_frac,
    )
    assert np.array_equal(agents.safe_w, derived)
    assert np.any(derived > cluster.topology.gpu_min_cap_w)
    cap_frac = np.asarray(result.series.tier_cap_frac)
    held = cap_frac[100 + int(TTL_S) + 3 : 250]
    tier = cluster.workloads.gpu_tier()
    count = np.maximum(np.bincount(tier, minlength=4), 1)
    on_safe = np.bincount(tier, weights=derived / cluster.topology.gpu_max_cap_w, minlength=4)
    assert np.allclose(held, on_safe / count)  # every GPU on its safe cap until the restart


def test_broker_outage_loses_telemetry_and_commands_and_racks_fall_back() -> None:
    result = run(site([{"kind": "broker_outage", "at_s": 100, "duration_s": 120}]))
    summary = assert_safe(result)
    assert summary["seconds_over_limit"]["site"] == 0.0
    n_racks = result.cluster.topology.n_racks
    assert np.all(safe_at(result, 100 + TTL_S + 1, 220) == n_racks)
    assert np.all(safe_at(result, 223, 420) == 0)
    agents = result.agents
    assert agents is not None
    assert set(agents.held_ctl) == {"sim-1"}


def test_command_loss_is_absorbed_by_the_next_command() -> None:
    result = run(site([{"kind": "command_loss", "fraction": 0.3}]))
    summary = assert_safe(result)
    assert summary["seconds_over_limit"]["site"] == 0.0
    agents = result.agents
    assert agents is not None
    periods = 420 + 60
    assert np.all(agents.applied < 0.8 * periods)  # about 30 % lost
    assert np.all(agents.applied > 0.55 * periods)
    assert np.all(agents.fallbacks == 0)


def test_late_jittered_telemetry_stays_safe() -> None:
    fault = {"kind": "telemetry_delay", "delay_s": 3.0, "jitter_s": 4.0}
    result = run(site([fault]))
    summary = assert_safe(result)
    assert summary["seconds_over_limit"]["site"] == 0.0
    clean = run(site([]))
    assert not np.array_equal(clean.series.site_power_w, result.series.site_power_w)


def test_jittered_telemetry_keeps_the_newest_reading_of_each_rack() -> None:
    scenario = site([{"kind": "telemetry_delay", "delay_s": 3.0, "jitter_s": 4.0}])
    cluster = build_cluster(scenario)
    path = TelemetryPath(cluster, FaultPlan(scenario, cluster))
    fleet = FleetState.empty(cluster.topology)
    seen, times = [], []
    for _ in range(200):
        cluster.step()
        now = cluster.now_s - scenario.tick_s
        path.publish(now)
        path.deliver(fleet, now)
        seen.append(fleet.rack_last_seen_s.copy())
        times.append(now)
    last = np.asarray(seen[20:])
    assert np.all(np.diff(last, axis=0) >= 0)  # an overtaken message never rolls a rack back
    age = np.asarray(times[20:])[:, None] - last
    # One tick of sensor delay plus 3 s, plus up to 4 s of jitter (and one period to arrive).
    assert age.min() >= 4.0 - 1e-9
    assert age.max() <= 9.0 + 1e-9
    assert age.max() > age.min()


def test_an_agents_wall_clock_offset_changes_nothing() -> None:
    clean = run(site([]))
    skewed = run(site([{"kind": "clock_skew", "offset_s": -3600.0}]))
    assert np.array_equal(clean.series.site_power_w, skewed.series.site_power_w)


def test_a_slow_agent_clock_stretches_its_ttl_in_true_time() -> None:
    faults = [
        {"kind": "controller_outage", "at_s": 100, "duration_s": 150},
        {"kind": "clock_skew", "rack": 0, "rate": 0.5},
    ]
    result = run(site(faults))
    assert_safe(result)
    n_racks = result.cluster.topology.n_racks
    # Rack 0's clock counts 30 s of TTL in 60 true seconds; the others fall back after 30.
    assert np.all(safe_at(result, 100 + TTL_S + 1, 100 + 2 * TTL_S - 1) == n_racks - 1)
    assert np.all(safe_at(result, 100 + 2 * TTL_S + 1, 250) == n_racks)


@pytest.mark.parametrize(
    "group", [{"rack": 1, "rating_frac": 0.75}, {"row": 0, "rating_frac": 0.6}]
)
def test_a_failed_feed_is_under_its_new_rating_within_two_ticks(group: dict[str, Any]) -> None:
    fault = {"kind": "feed_failure", "at_s": 200} | group
    result = run(site([fault]))
    summary = summarize(result)
    assert result.cluster.trips == []
    level = "rack" if "rack" in group else "row"
    # Unannounced: the feed is over its new usable limit only until the next caps land.
    assert 0.0 < summary["seconds_over_limit"][level] <= 2.0
    assert summary["seconds_over_limit"]["site"] == 0.0


def test_acceptance_follows_epoch_then_instance_then_seq() -> None:
    assert acceptance(None, 0, "a", 1) is None
    held = (2, "a", 5)
    assert acceptance(held, 3, "a", 1) is None  # a new leader's term
    assert acceptance(held, 1, "b", 99) == STALE_EPOCH
    assert acceptance(held, 2, "b", 1) is None  # a restarted controller, same term
    assert acceptance(held, 2, "a", 5) == STALE_SEQ
    assert acceptance(held, 2, "a", 6) is None


def test_an_agent_falls_back_to_the_safe_caps_its_last_command_carried() -> None:
    cluster = build_cluster(site([]))
    agents = FastAgents(cluster=cluster)
    topo = cluster.topology
    rows = topo.rack_slice(0)
    n = rows.stop - rows.start
    safe = (topo.gpu_min_cap_w[rows] + topo.gpu_max_cap_w[rows]) / 2.0
    cmd = RackCommand(
        epoch=0,
        ctl="c1",
        seq=1,
        ttl_s=5.0,
        cap_w=topo.gpu_max_cap_w[rows],
        sm_clock_max_mhz=np.full(n, 1e4),
        safe_cap_w=safe,
    )
    agents.advance(0.0)
    assert agents.deliver(0, cmd)
    assert not agents.deliver(0, cmd)  # the same seq again: refused and counted
    assert agents.rejected[STALE_SEQ][0] == 1
    agents.advance(4.9)
    assert not agents.on_safe_cap[0]
    agents.advance(5.0)
    assert agents.on_safe_cap[0]
    assert not agents.on_safe_cap[1:].any()  # racks never commanded keep what they had
    for _ in range(3):  # the actuation lag
        cluster.step()
    assert np.allclose(cluster.cap_w[rows], safe)


def test_all_racks_blind_and_an_announced_cut_stays_under_the_limit() -> None:
    blind = [
        {"kind": "telemetry_loss", "rack": rack, "at_s": 150, "duration_s": 200}
        for rack in range(4)
    ]
    steps = {"steps": [{"at_s": 200, "site_limit_frac": 0.6, "notice_s": 60}]}
    result = run(site(blind, limits=steps))
    summary = assert_safe(result)
    assert summary["seconds_over_limit"]["site"] == 0.0


def test_fleet_commands_follow_the_same_acceptance_rule() -> None:
    cluster = build_cluster(site([]))
    agents = FastAgents(cluster=cluster)
    topo = cluster.topology
    n = topo.n_racks
    caps, clocks = topo.gpu_max_cap_w.copy(), np.full(topo.n_gpus, 1e4)
    every = np.ones(n, dtype=bool)

    def send(reached: np.ndarray, epoch: int, ctl: str, seq: int) -> int:
        return agents.deliver_fleet(
            reached, epoch=epoch, ctl=ctl, seq=seq, ttl_s=30.0, cap_w=caps, sm_clock_max_mhz=clocks
        )

    assert send(every, 1, "a", 5) == n
    assert send(every, 1, "a", 5) == 0  # a replay
    assert np.all(agents.rejected[STALE_SEQ] == 1)
    assert send(every, 0, "b", 9) == 0  # a deposed leader
    assert np.all(agents.rejected[STALE_EPOCH] == 1)
    only_first = np.arange(n) == 0
    assert send(only_first, 1, "c", 1) == 1  # a restarted instance, same term; one rack reached
    assert agents.held(0) == (1, "c", 1)
    assert agents.held(1) == (1, "a", 5)


def test_an_outage_under_a_lowered_limit_falls_back_to_safe_caps_that_fit_it() -> None:
    # The contract steps to 60 % (announced) and the controller dies 50 s later for longer than
    # the commands' TTL: every rack falls back to the safe caps its last command carried. Derived
    # for the contract the controller started with, those were over the lowered limit; they now
    # follow the limit in force (`policies.safe_caps.follow_site_limit`).
    outage = [{"kind": "controller_outage", "at_s": 250, "duration_s": 100}]
    steps = {"steps": [{"at_s": 200, "site_limit_frac": 0.6, "notice_s": 60}]}
    result = run(site(outage, limits=steps))
    summary = assert_safe(result)
    assert np.all(safe_at(result, 290, 345) == 4)  # every rack on its safe caps
    assert summary["seconds_over_limit"]["site"] == 0.0
