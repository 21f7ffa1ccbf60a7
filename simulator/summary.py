"""The run summary every consumer shares: `rheostat simulate --json`, reports, demo, scoreboard.

Throughput retained is measured: each job's work (iterations, tokens) under control divided by
the same job's work in the same scenario with unlimited power. Per tier it is the GPU-weighted
mean over that tier's jobs; `weighted` also weights tiers by priority (tier 0 counts 8x, 1 4x,
2 2x, 3 1x), so slowing the jobs that matter most costs most.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.dr.report import dr_entries
from simulator.carbon import co2_reduction, work_targets
from simulator.loop import RunResult
from simulator.oracle_run import oracle_keys

#: Priority weight of each Flex tier in `throughput_retained.weighted`.
TIER_WEIGHTS = (8.0, 4.0, 2.0, 1.0)


def throughput_retained(controlled: RunResult, reference: RunResult) -> dict[str, float]:
    """Tier name -> work fraction kept against the unlimited reference, plus `weighted`."""
    real = controlled.job_names[:-1]  # the last job is the idle pool
    n = len(real)
    work = controlled.job_work[:n]
    base = reference.job_work[:n]
    gpus = controlled.job_gpus[:n]
    tiers = controlled.job_tier[:n]
    has_work = base > 0
    ratio = np.where(has_work, work / np.where(has_work, base, 1.0), 1.0)
    out: dict[str, float] = {}
    num = den = 0.0
    for t in range(len(TIER_WEIGHTS)):
        mask = (tiers == t) & has_work
        if not mask.any():
            continue
        w = gpus[mask]
        frac = float(np.sum(ratio[mask] * w) / np.sum(w))
        out[f"tier{t}"] = round(frac, 4)
        num += TIER_WEIGHTS[t] * float(np.sum(ratio[mask] * w))
        den += TIER_WEIGHTS[t] * float(np.sum(w))
    out["weighted"] = round(num / den, 4) if den else 1.0
    return out


def summarize(
    controlled: RunResult,
    reference: RunResult | None = None,
    *,
    blind: RunResult | None = None,
    even: RunResult | None = None,
) -> dict[str, Any]:
    """The summary as plain JSON types. Without a reference, throughput is not reported.

    `blind` is the carbon-blind twin of a scenario with a carbon policy (`co2_reduction_vs_blind`:
    each job runs until its daily target is done), `even` the same work spread evenly over the
    day (`co2_reduction_vs_even`); see `simulator.carbon`.
    """
    comp = controlled.compliance
    sc = controlled.scenario
    energy_kwh = comp.energy_j / 3.6e6
    cluster = controlled.cluster
    summary: dict[str, Any] = {
        "scenario": sc.name,
        "controller": controlled.controller,
        "duration_s": sc.duration_s,
        "gpus": cluster.topology.n_gpus,
        "breaker_trips": len(cluster.trips),
        "tripped_racks": [rack for _, rack in cluster.trips],
        "seconds_over_limit": {k: round(v, 3) for k, v in comp.seconds_over.items()},
        "max_overshoot_pct": round(comp.max_overshoot_frac * 100.0, 3),
        "time_to_cap_s": [None if t is None else round(t, 3) for t in controlled.time_to_cap_s],
        "throughput_retained": (
            throughput_retained(controlled, reference) if reference is not None else {}
        ),
        "energy_kwh": round(energy_kwh, 3),
        "energy_cost_usd": round(energy_kwh / 1000.0 * sc.grid.price_per_mwh, 2),
        "carbon_kg": round(comp.carbon_lbs * 0.45359237, 3) if sc.grid.carbon != "none" else None,
        "peak_site_power_kw": round(max(controlled.series.site_power_w, default=0.0) / 1e3, 3),
        "max_ramp_kw_per_s": round(comp.max_ramp_w_per_s / 1e3, 3),
        "ramp_violation_s": round(comp.ramp_violation_s, 3),
        "realtime_factor": round(controlled.realtime_factor, 1),
        "dr": dr_summary(controlled, reference),
    }
    summary.update(oracle_keys(controlled.oracle))
    summary.update(latency_summary(controlled))
    fac = controlled.facility
    if fac is not None:
        if fac.spec is not None:  # the contract is metered at the facility, cooling included
            summary["seconds_over_limit"]["facility"] = round(fac.seconds_over, 3)
        summary.update(fac.summary())
    if sc.carbon_policy is not None:
        summary["co2_reduction_vs_blind"] = (
            co2_reduction(controlled, blind) if blind is not None else None
        )
        summary["co2_reduction_vs_even"] = (
            co2_reduction(controlled, even) if even is not None else None
        )
        summary["work_targets"] = work_targets(controlled)
    return summary


def latency_summary(controlled: RunResult) -> dict[str, Any]:
    """`inference_latency_s`: per Flex tier with inference services, the queueing delay p50/p99
    of its requests (s, in whole ticks: 0 = served within the tick it arrived), weighted by
    requests for trace-fed services and by work otherwise; requests still waiting at the end
    count at their wait so far (`simulator.queues`). Absent without inference services."""
    cluster = controlled.cluster
    by_tier = cluster.workloads.latency_by_tier(cluster.now_s)
    if not by_tier:
        return {}
    return {
        "inference_latency_s": {
            f"tier{t}": {"p50": round(v["p50"], 3), "p99": round(v["p99"], 3)}
            for t, v in by_tier.items()
        }
    }


def dr_summary(controlled: RunResult, reference: RunResult | None) -> list[dict[str, Any]]:
    """Per DR event: delivery against target and per-tier throughput (`policies.dr.report`).

    Computed from the sampled series; a tier's work rate is its mean speed times its GPU count,
    against the unlimited reference's at the same instants.
    """
    s = controlled.series
    if not s.t_s:
        return []
    counts = np.bincount(controlled.cluster.workloads.gpu_tier(), minlength=len(TIER_WEIGHTS))
    work = unconstrained = None
    if reference is not None and len(reference.series.tier_speed) == len(s.tier_speed):
        work = np.asarray(s.tier_speed) * counts
        unconstrained = np.asarray(reference.series.tier_speed) * counts
    return dr_entries(
        controlled.limits.events,
        s.t_s,
        s.site_power_w,
        tier_work=work,
        tier_work_unconstrained=unconstrained,
    )
