"""The tick's stage composition: phase order, limits only tightened, one wall-to-DC conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.decision import Decision, Limits
from policies.errors import PolicyError
from policies.facility import FacilitySettings, FacilityStage, MeterSample, it_budget
from policies.fleet import FleetState
from policies.stages import Idle, Tick, compose, dc_limits, dc_w, ordered, wall_w
from policies.topology import generate_topology


class Recorder(Idle):
    def __init__(self, name: str, log: list[str], *, limit_w: float = math.inf) -> None:
        self.name, self.log, self.limit_w = name, log, limit_w

    def observe(self, tick: Tick) -> None:
        self.log.append(f"observe:{self.name}")

    def limits(self, tick: Tick) -> None:
        self.log.append(f"limits:{self.name}")
        tick.tighten(self.limit_w)

    def ceilings(self, tick: Tick) -> None:
        self.log.append(f"ceilings:{self.name}")
        tick.cap_ceiling(np.full(tick.topology.n_gpus, 500.0))

    def account(self, tick: Tick) -> None:
        self.log.append(f"account:{self.name}")


def _tick(eff: float = 0.9) -> Tick:
    topo = generate_topology(8)
    return Tick(
        now_s=0.0,
        mono_s=0.0,
        dt_s=1.0,
        topology=topo,
        fleet=FleetState.empty(topo),
        tier=np.zeros(topo.n_gpus, dtype=np.int8),
        psu_efficiency=eff,
        site_power_w=1e4,
    )


def _decision(n: int, cap_w: float) -> Decision:
    full = np.full(n, cap_w)
    return Decision(
        cap_w=full.copy(),
        sm_clock_max_mhz=np.full(n, 1980.0),
        demand_w=full.copy(),
        tier=np.zeros(n, dtype=np.int8),
        site_allowed_w=float(full.sum()),
        budget_w=(),
        limit_w=(),
        infeasible=(),
        dvfs_saving_w=0.0,
    )


def test_each_phase_runs_over_every_stage_before_the_next() -> None:
    log: list[str] = []
    stages = ordered(grid=Recorder("grid", log, limit_w=8e4), facility=Recorder("fac", log))
    tick = _tick(0.9)
    seen: list[Limits] = []

    def decide(t: Tick, limits: Limits) -> Decision:
        seen.append(limits)
        log.append("decide")
        return _decision(t.topology.n_gpus, 700.0)

    decision = compose(stages, tick, decide)
    assert log == [
        "observe:grid",
        "observe:fac",
        "limits:grid",
        "limits:fac",
        "decide",
        "ceilings:grid",
        "ceilings:fac",
        "account:grid",
        "account:fac",
    ]
    assert seen[0].site_limit_w == pytest.approx(8e4 * 0.9)  # converted once, to the DC side
    assert np.all(decision.cap_w == 500.0)  # ceilings only lower caps


def test_limits_only_tighten_and_ceilings_never_raise() -> None:
    tick = _tick()
    tick.tighten(5e4)
    tick.tighten(9e4)
    assert tick.site_limit_w == 5e4
    tick.cap_ceiling(np.full(tick.topology.n_gpus, 300.0))
    tick.cap_ceiling(np.full(tick.topology.n_gpus, 600.0))
    assert tick.ceiling_w is not None
    assert np.all(tick.ceiling_w == 300.0)


def test_dc_conversion_round_trips_and_keeps_no_limit() -> None:
    assert wall_w(dc_w(1234.5, 0.95), 0.95) == pytest.approx(1234.5)
    assert dc_limits(Limits(), math.inf, 0.95) == Limits()
    assert dc_limits(Limits(site_limit_w=10.0), 1e6, 0.95).site_limit_w == 10.0
    with pytest.raises(PolicyError):
        dc_w(1.0, 0.4)


def test_facility_stage_turns_the_limit_in_force_into_an_it_budget() -> None:
    settings = FacilitySettings()
    stage = FacilityStage(settings=settings, contract_w=1e6, design_outdoor_c=30.0)
    tick = _tick(1.0)
    tick.tighten(8e5)  # a DR limit below the contract
    stage.observe(tick)
    assert tick.metered_w > tick.site_power_w  # no meter: IT power plus modelled overhead
    stage.limits(tick)
    assert tick.site_limit_w == pytest.approx(
        it_budget(8e5, outdoor_c=30.0, settings=settings).budget_w
    )
    assert stage.take(MeterSample(ts=10.0, facility_w=9e5, it_w=7e5))
    assert not stage.take(MeterSample(ts=5.0, facility_w=1.0, it_w=1.0))  # older: ignored
    assert stage.metered_w(12.0, 1.0) == 9e5
