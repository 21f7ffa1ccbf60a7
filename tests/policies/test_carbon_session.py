"""The one carbon algorithm: reports and a forecast in, cap ceilings out, floors that learn."""

from __future__ import annotations

import numpy as np
import pytest

from policies.carbon import SPEED_GUARD, CarbonSettings
from policies.carbon_session import FLOOR_STEP, CarbonSession, CarbonStage, Forecast
from policies.fleet import FleetState
from policies.floors import activity_floor_caps
from policies.gpu_models import model_table
from policies.stages import Tick, finish_caps
from policies.topology import generate_topology

TOPO = generate_topology(16, a100_share=0.0)
ROWS = np.arange(8, 16, dtype=np.int64)
DAY_S = 3600.0


def session(values: list[float]) -> CarbonSession:
    settings = CarbonSettings(slot_s=60.0, track_s=60.0)
    forecast = Forecast.steps(0.0, 60.0, np.asarray(values, dtype=np.float64))
    return CarbonSession(settings=settings, topology=TOPO, forecast=forecast)


def report(s: CarbonSession, t: float, owed: float, *, tier: int = 3) -> None:
    s.report("sweep", ts=t, tier=tier, deadline_ts=DAY_S, owed_s=owed, rows=ROWS, now_s=t)


def run_at_speed(s: CarbonSession, speed: float, owed: float, t0: float, n: int) -> float:
    """Reports every track window from a job measured at `speed`; returns what it still owes."""
    for k in range(1, n + 1):
        owed -= speed * 60.0
        report(s, t0 + 60.0 * k, owed)
        s.ceilings(t0 + 60.0 * k)
    return owed


def test_dirty_slots_get_lower_ceilings_and_only_on_the_jobs_gpus() -> None:
    s = session([500.0] * 30 + [50.0] * 30)
    report(s, 0.0, 0.5 * DAY_S)
    ceiling = s.ceilings(0.0)
    assert ceiling is not None
    # Caps start where they are; the tracker steers them once a window's speed is measured.
    np.testing.assert_array_equal(ceiling, TOPO.gpu_max_cap_w)
    run_at_speed(s, 1.0, 0.5 * DAY_S, 0.0, 1)
    ceiling = s.ceilings(60.0)
    assert ceiling is not None
    np.testing.assert_array_equal(ceiling[:8], TOPO.gpu_max_cap_w[:8])  # not the job's
    assert np.all(ceiling[ROWS] < TOPO.gpu_max_cap_w[ROWS])
    assert s.jobs["sweep"].planned < 1.0
    # The clean half of the hour: the plan runs the job faster there.
    assert s.jobs["sweep"].planned < 0.75


def test_no_forecast_no_fresh_report_or_no_shifted_tier_means_no_ceiling() -> None:
    s = session([500.0] * 10)  # the forecast ends long before the deadline
    report(s, 0.0, 0.5 * DAY_S)
    assert s.ceilings(0.0) is None
    s = session([500.0] * 60)
    report(s, 0.0, 0.5 * DAY_S, tier=1)
    assert s.ceilings(0.0) is None
    s = session([500.0] * 60)
    report(s, 0.0, 0.5 * DAY_S)
    assert s.ceilings(0.0) is not None
    assert s.ceilings(s.settings.job_timeout_s + 1.0) is None  # its reports went stale


def test_floor_comes_down_while_the_job_runs_faster_than_its_tier_needs_there() -> None:
    s = session([500.0] * 60)
    report(s, 0.0, 0.4 * DAY_S)
    s.ceilings(0.0)
    job = s.jobs["sweep"]
    start = job.floor_frac
    assert job.planned == pytest.approx(0.5)  # the plan sits on the Flex 3 tolerance
    # Measured at 0.8 whatever its cap: the floor steps down, one step per settled window.
    run_at_speed(s, 0.8, 0.4 * DAY_S, 0.0, 12)
    assert job.floor_frac < start - FLOOR_STEP
    assert job.floor_frac >= job.min_frac
    # A job only just fast enough keeps its floor.
    s2 = session([500.0] * 60)
    report(s2, 0.0, 0.4 * DAY_S)
    s2.ceilings(0.0)
    run_at_speed(s2, 0.5 + 1.5 * SPEED_GUARD, 0.4 * DAY_S, 0.0, 12)
    assert s2.jobs["sweep"].floor_frac == pytest.approx(start)


def test_ceilings_keep_the_cores_tier_floors_whatever_the_job_measures() -> None:
    """Progress counts communication, which no cap slows: a job measured fast enough can still
    compute slower than its tier allows. The core's per-GPU tier floors bound the ceilings."""
    activity = np.full(TOPO.n_gpus, 0.9)
    idle = model_table("idle_w")[TOPO.gpu_model]
    floor = activity_floor_caps(
        idle_w=idle,
        dynamic_w=TOPO.gpu_max_cap_w - idle,
        activity=activity,
        tier=np.full(TOPO.n_gpus, 3, dtype=np.int8),
        tolerances=CarbonSettings().tolerances,
    )
    lowest: dict[str, float] = {}
    for given in (None, activity):
        s = session([500.0] * 60)
        report(s, 0.0, 0.4 * DAY_S)
        s.ceilings(0.0, given)
        owed = 0.4 * DAY_S
        ceiling = None
        for k in range(1, 16):  # measured at 0.8: the learned floor steps down
            owed -= 0.8 * 60.0
            report(s, 60.0 * k, owed)
            ceiling = s.ceilings(60.0 * k, given)
        assert ceiling is not None
        lowest["floors" if given is not None else "plain"] = float(
            np.min(ceiling[ROWS] - floor[ROWS])
        )
        if given is not None:
            # No wind-up below the floors: the fraction stays where a cap still moves.
            job = s.jobs["sweep"]
            assert job.frac >= float(np.min(floor[ROWS] / TOPO.gpu_max_cap_w[ROWS])) - 1e-12
    assert lowest["plain"] < 0.0  # the learned floor alone goes below the core's floor
    assert lowest["floors"] >= -1e-9


def test_a_floor_raised_for_slowness_never_comes_down() -> None:
    s = session([500.0] * 60)
    report(s, 0.0, 0.4 * DAY_S)
    s.ceilings(0.0)
    job = s.jobs["sweep"]
    owed = run_at_speed(s, 0.4, 0.4 * DAY_S, 0.0, 3)  # slower than Flex 3 tolerates
    raised = job.floor_frac
    assert job.floor_raised
    run_at_speed(s, 0.9, owed, 180.0, 10)
    assert job.floor_frac == raised


def test_the_stage_lowers_caps_and_never_raises_them() -> None:
    s = session([500.0] * 60)
    report(s, 0.0, 0.3 * DAY_S)
    s.ceilings(0.0)
    run_at_speed(s, 1.0, 0.3 * DAY_S, 0.0, 1)
    tick = Tick(
        now_s=60.0,
        mono_s=0.0,
        dt_s=1.0,
        topology=TOPO,
        fleet=FleetState.empty(TOPO),
        tier=np.full(TOPO.n_gpus, 3, dtype=np.int8),
    )
    low = np.full(TOPO.n_gpus, 150.0)
    capped = finish_caps([CarbonStage(s)], tick, TOPO.gpu_max_cap_w.copy())
    assert np.all(capped[ROWS] < TOPO.gpu_max_cap_w[ROWS])
    tick.ceiling_w = None
    np.testing.assert_array_equal(finish_caps([CarbonStage(s)], tick, low), low)
