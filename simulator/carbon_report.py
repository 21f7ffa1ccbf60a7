"""What a run with a carbon policy did: each shifted job's daily target, and the emissions saved
against a twin run (`simulator.carbon.blind_twin`, `even_twin`).

Apart from `simulator.carbon`, which the closed loop runs, so reading a run's result does not
make the loop import itself.
"""

from __future__ import annotations

from typing import Any

from simulator.loop import RunResult


def work_targets(controlled: RunResult) -> list[dict[str, Any]]:
    """Each shifted job's daily target, the work done and its largest slowdown while owing work.

    Units: s of full-speed running; `max_slowdown` is a fraction of full speed, to compare with
    the tier's tolerance.
    """
    spec = controlled.scenario.carbon_policy
    if spec is None:
        return []
    log = controlled.carbon
    out: list[dict[str, Any]] = []
    dur = controlled.scenario.duration_s
    train_specs = [w for w in controlled.scenario.workloads if w.kind == "training"]
    for k, (job, ws) in enumerate(
        zip(controlled.cluster.workloads.training, train_specs, strict=True)
    ):
        if job.tier not in spec.shift_tiers:
            continue
        # The window comes from the scenario: a job stopped at its target has a shorter end_s.
        end_s = dur if ws.end_s is None else min(ws.end_s, dur)
        window = max(end_s - max(ws.start_s, 0.0), 0.0)
        target = spec.work_target_frac[job.tier] * window
        done = float(controlled.job_work[k]) * job.iteration_s
        entry: dict[str, Any] = {
            "job": job.name,
            "tier": job.tier,
            "target_s": round(target, 1),
            "done_s": round(done, 1),
            "met": bool(done >= target),
        }
        if log is not None and job.name in log.names:
            i = log.names.index(job.name)
            entry["max_slowdown"] = round(1.0 - log.min_speed[i], 4)
            entry["tolerance"] = spec.tolerances[job.tier]
            stop = log.stopped_at_s[i]
            entry["stopped_at_s"] = None if stop is None else round(stop, 1)
        out.append(entry)
    return out


def co2_reduction(controlled: RunResult, other: RunResult) -> float | None:
    """1 - emissions / another schedule's emissions, at the facility meter (fraction)."""
    a, b = controlled.facility, other.facility
    if a is None or b is None or a.intensity_kg_per_mwh is None or b.co2_kg <= 0:
        return None
    return round(1.0 - a.co2_kg / b.co2_kg, 4)
