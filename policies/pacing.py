"""Synchronous jobs held to their slowest member's pace, so no member draws power it cannot use."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from policies.dvfs import MIN_ACTIVITY
from policies.errors import PolicyError
from policies.plan import CappingPlan

FloatArray = NDArray[np.float64]

#: A synchronous job whose slowest member's pace is within this of full speed is not held back.
PACE_TOL = 1e-3


def pace_ceiling(
    plan: CappingPlan,
    cap_w: FloatArray,
    sync_job: NDArray[np.int32],
    activity: FloatArray,
) -> FloatArray | None:
    """Per GPU, the cap at which it keeps its synchronous job's pace (inf outside one). Units: W.

    A synchronous job (data-parallel training) steps at its slowest GPU: a member whose breaker
    or tier share left it less power holds every other member back, and what those draw above
    its pace buys nothing. Under the policy's power model a GPU's clock is a function, the same
    for every model, of b = (cap - idle) / (dynamic range x activity), so members keep the pace
    of the slowest one exactly when their b is at most its b: the ceiling puts them there. None
    when no job is held back (every member's cap above its full draw), which costs nothing more.
    Members of one job share their activity; the peak-held one is used so that a communication
    dip does not read as a lower pace.
    """
    if sync_job.shape != cap_w.shape:
        raise PolicyError(f"sync_job must have shape ({cap_w.size},)")
    n_jobs = int(sync_job.max()) + 1 if sync_job.size else 0
    if n_jobs <= 0:
        return None
    # GPUs in no job join a last, never-held pseudo-job: one gather then serves every GPU.
    idx = np.where(sync_job < 0, n_jobs, sync_job)
    dynamic = np.maximum(activity, MIN_ACTIVITY)
    np.minimum(dynamic, 1.0, out=dynamic)
    dynamic *= plan.dynamic_w
    pace = np.subtract(cap_w, plan.idle_w)
    np.divide(pace, dynamic, out=pace)
    job_pace = np.ones(n_jobs + 1)
    np.minimum.at(job_pace, idx, pace)
    free = job_pace >= 1.0 - PACE_TOL
    free[n_jobs] = True
    if free.all():
        return None
    # A free job's members get an infinite pace, so their ceiling is no ceiling.
    job_pace[free] = np.inf
    ceiling = job_pace[idx]
    ceiling *= dynamic
    ceiling += plan.idle_w
    return ceiling
