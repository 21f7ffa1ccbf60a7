"""`decide` is bit-exact against stored outputs on a few varied fleets, tick after tick.

The fixture `tests/data/decide_regression.npz` holds every output of a sequence of ticks per case
(caps, clocks, demand, group budgets and limits, infeasible flags, site figure, saving, and the
state the next tick starts from). Restructuring the decision core must leave every bit of them
unchanged; a change that is meant to move a figure regenerates the fixture on purpose:

    .venv/bin/python -m tests.policies.test_decide_regression
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from policies.decision import (
    CappingSettings,
    Decision,
    DecisionState,
    DvfsSettings,
    Limits,
    PolicySettings,
)
from policies.dr.flex import gpu_floor_w
from policies.errors import PolicyError
from policies.fleet import FleetState
from policies.pipeline import decide
from policies.tiers import N_TIERS
from policies.topology import Topology, generate_topology
from policies.workspace import DecisionWorkspace
from tests.policies.pol_instances import build_topology

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "decide_regression.npz"
TICKS = 5


@dataclass(frozen=True)
class Tick:
    """One tick's inputs besides the topology, the tiers and the settings."""

    fleet: FleetState
    limits: Limits
    now_s: float
    stale_rack: NDArray[np.bool_] | None
    sync_job: NDArray[np.int32] | None


@dataclass(frozen=True)
class Case:
    topology: Topology
    tier: NDArray[np.int8]
    settings: PolicySettings
    ticks: Callable[[Topology, NDArray[np.int8]], Iterator[Tick]]


def _fleet(topology: Topology, rng: np.random.Generator, now_s: float, load: float) -> FleetState:
    """Busy telemetry with idle, pinned, memory-bound and clock-held GPUs mixed in."""
    n = topology.n_gpus
    fleet = FleetState.empty(topology)
    busy = rng.random(n) < 0.85
    frac = np.where(busy, rng.uniform(0.55 * load, min(1.0, 1.05 * load), n), 0.1)
    fleet.cap_w = topology.gpu_max_cap_w * rng.uniform(0.6, 1.0, n)
    fleet.power_w = np.minimum(topology.gpu_max_cap_w * frac, fleet.cap_w * 1.01)
    fleet.util = np.where(busy, rng.uniform(0.3, 1.0, n), 0.0)
    decode = rng.random(n) < 0.25
    fleet.util = np.where(decode, 0.2, fleet.util)
    fleet.mem_util = np.where(decode, 0.8, rng.uniform(0.05, 0.5, n))
    fleet.sm_clock_mhz = rng.choice([1200.0, 1410.0, 1755.0, 1980.0], n)
    fleet.rack_last_seen_s[:] = now_s
    return fleet


def _plain(topology: Topology, tier: NDArray[np.int8]) -> Iterator[Tick]:
    """Unconstrained ticks with moving load: the surplus phase and the anti-chatter rules."""
    rng = np.random.default_rng(11)
    for i in range(TICKS):
        fleet = _fleet(topology, rng, float(i), load=0.7 + 0.1 * i)
        yield Tick(fleet, Limits(), float(i) * 0.5, None, None)


def _site_dr(topology: Topology, tier: NDArray[np.int8]) -> Iterator[Tick]:
    """A binding site limit, a softer DR target with tier floors, stepping down then back up."""
    rng = np.random.default_rng(12)
    site = float(topology.levels[-1].usable_w[0])
    for i, share in enumerate((0.9, 0.7, 0.55, 0.6, 0.85)):
        fleet = _fleet(topology, rng, float(i), load=0.95)
        floors = gpu_floor_w(fleet.power_w, tier, topology.gpu_min_cap_w) if i in {1, 2} else None
        limits = Limits(site_limit_w=site * 0.92, site_target_w=site * share, gpu_floor_w=floors)
        yield Tick(fleet, limits, float(i), None, None)


def _stale(topology: Topology, tier: NDArray[np.int8]) -> Iterator[Tick]:
    """Racks going blind, a limit cut while they are, and a cold start with a blind rack."""
    rng = np.random.default_rng(13)
    site = float(topology.levels[-1].usable_w[0])
    n_racks = topology.n_racks
    for i in range(TICKS):
        fleet = _fleet(topology, rng, float(i), load=0.9)
        stale = np.zeros(n_racks, dtype=np.bool_)
        stale[: 1 + i % 3] = i != 3
        limit = site * (0.6 if i >= 2 else 0.95)
        yield Tick(fleet, Limits(site_limit_w=limit), float(i) * 2.0, stale, None)


def _paced(topology: Topology, tier: NDArray[np.int8]) -> Iterator[Tick]:
    """Synchronous jobs held to their slowest member's pace under a binding limit."""
    rng = np.random.default_rng(14)
    n = topology.n_gpus
    site = float(topology.levels[-1].usable_w[0])
    job = (np.arange(n) // 24).astype(np.int32)
    job[rng.random(n) < 0.1] = -1
    for i in range(TICKS):
        fleet = _fleet(topology, rng, float(i), load=1.0)
        stale = np.zeros(topology.n_racks, dtype=np.bool_)
        stale[-1] = i == 2
        yield Tick(fleet, Limits(site_limit_w=site * 0.75), float(i), stale, job)


def _irregular_topology() -> Topology:
    """Servers of uneven size and rows of uneven width: the general (non-reshape) sum paths."""
    server_gpus = [3, 5, 2, 4, 6, 1, 4, 3, 5, 2, 4, 4]
    server_rack = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    n_gpus = sum(server_gpus)
    return build_topology(
        server_gpus,
        server_rack,
        [0, 1, 0, 1, 1],
        gpu_model=[i % 3 for i in range(n_gpus)],
        server_limit_w=[450.0 * g for g in server_gpus],
        rack_limit_w=[2600.0, 3400.0, 1700.0, 2500.0, 2300.0],
        row_limit_w=[4200.0, 6200.0],
        site_limit_w=9000.0,
        server_overhead_w=[60.0 + 10.0 * (i % 4) for i in range(len(server_gpus))],
        rack_derating=[0.8, 0.9, 1.0, 0.85, 0.8],
    )


def _tiers(n: int, seed: int) -> NDArray[np.int8]:
    return np.random.default_rng(seed).integers(0, N_TIERS, n).astype(np.int8)


def cases() -> dict[str, Case]:
    regular = generate_topology(160, racks_per_row=2)
    irregular = _irregular_topology()
    ramped = CappingSettings(site_ramp_up_w_per_s=2000.0, site_ramp_down_w_per_s=4000.0)
    no_dvfs = PolicySettings(
        capping=CappingSettings(flex_tolerances=(0.0, 0.0, 0.0, 0.0), demand_hold_s=0.0),
        dvfs=DvfsSettings(enabled=False),
    )
    no_fit = PolicySettings(dvfs=DvfsSettings(fit_compute_bound=False, fit_min_swing=0.0))
    return {
        "plain": Case(regular, _tiers(160, 1), PolicySettings(), _plain),
        "site_dr": Case(regular, _tiers(160, 2), PolicySettings(capping=ramped), _site_dr),
        "stale": Case(regular, _tiers(160, 3), PolicySettings(), _stale),
        "paced": Case(regular, _tiers(160, 4), no_fit, _paced),
        "strict_no_dvfs": Case(regular, _tiers(160, 5), no_dvfs, _site_dr),
        "irregular": Case(irregular, _tiers(irregular.n_gpus, 6), PolicySettings(), _stale),
        "irregular_paced": Case(irregular, _tiers(irregular.n_gpus, 7), PolicySettings(), _paced),
    }


def _record(decision: Decision, state: DecisionState) -> dict[str, NDArray[np.generic]]:
    out: dict[str, NDArray[np.generic]] = {
        "cap_w": decision.cap_w,
        "sm_clock_max_mhz": decision.sm_clock_max_mhz,
        "demand_w": decision.demand_w,
        "tier": decision.tier,
        "site_allowed_w": np.float64(decision.site_allowed_w),
        "dvfs_saving_w": np.float64(decision.dvfs_saving_w),
        "state_cap_w": state.cap_w,
        "state_now_s": np.float64(state.now_s),
        "state_site_allowed_w": np.float64(state.site_allowed_w),
    }
    for name in ("util_held", "sm_clock_max_mhz", "demand_w", "floor_basis_w"):
        held = getattr(state, name)
        if held is not None:
            out[f"state_{name}"] = held
    for k, (budget, limit, flags) in enumerate(
        zip(decision.budget_w, decision.limit_w, decision.infeasible, strict=True)
    ):
        out[f"budget_w_{k}"], out[f"limit_w_{k}"], out[f"infeasible_{k}"] = budget, limit, flags
    return {key: np.array(value, copy=True) for key, value in out.items()}


def run_case(
    case: Case, workspace: DecisionWorkspace | None
) -> Iterator[dict[str, NDArray[np.generic]]]:
    """Every tick's outputs, warm from the second tick on (with one workspace throughout)."""
    state: DecisionState | None = None
    for tick in case.ticks(case.topology, case.tier):
        decision, state = decide(
            case.topology,
            tick.fleet,
            tier=case.tier,
            limits=tick.limits,
            settings=case.settings,
            state=state,
            now_s=tick.now_s,
            stale_rack=tick.stale_rack,
            sync_job=tick.sync_job,
            workspace=workspace,
        )
        yield _record(decision, state)


def generate(path: Path = FIXTURE) -> None:
    """Write the fixture from the current decision core."""
    arrays: dict[str, NDArray[np.generic]] = {}
    for name, case in cases().items():
        for t, outputs in enumerate(run_case(case, None)):
            arrays.update({f"{name}/{t}/{key}": value for key, value in outputs.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


@pytest.mark.parametrize("lend", ["none", "own", "shared"])
def test_decide_is_bit_exact_against_the_stored_outputs(lend: str) -> None:
    """Without a workspace, with one per case, and with one lent to every case of its size in
    turn (its caches must follow the plan it serves)."""
    # Closed even when a comparison fails: a leaked handle fails a later test instead.
    with np.load(FIXTURE) as stored:
        seen: set[str] = set()
        shared: dict[int, DecisionWorkspace] = {}
        for name, case in cases().items():
            n = case.topology.n_gpus
            workspace = {
                "none": None,
                "own": DecisionWorkspace(n),
                "shared": shared.setdefault(n, DecisionWorkspace(n)),
            }[lend]
            for t, outputs in enumerate(run_case(case, workspace)):
                for key, value in outputs.items():
                    full = f"{name}/{t}/{key}"
                    seen.add(full)
                    expected = stored[full]
                    assert value.dtype == expected.dtype, full
                    # array_equal with equal_nan: bit-exact, NaN where NaN was stored.
                    assert np.array_equal(value, expected, equal_nan=value.dtype.kind == "f"), (
                        f"{full} moved: max |diff| "
                        f"{np.max(np.abs(value.astype(float) - expected.astype(float)))}"
                    )
        assert seen == set(stored.files), "outputs appeared or disappeared"


def test_decisions_are_read_only_and_the_workspace_is_sized() -> None:
    """Callers cannot edit a decision the next tick reads back, nor lend a mis-sized workspace."""
    case = cases()["plain"]
    ticks = case.ticks(case.topology, case.tier)
    tick = next(ticks)
    decision, state = decide(
        case.topology,
        tick.fleet,
        tier=case.tier,
        limits=tick.limits,
        settings=case.settings,
        state=None,
        now_s=tick.now_s,
    )
    for array in (decision.cap_w, decision.sm_clock_max_mhz, decision.demand_w, state.util_held):
        assert array is not None
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0.0
    with pytest.raises(PolicyError, match="workspace"):
        decide(
            case.topology,
            tick.fleet,
            tier=case.tier,
            limits=tick.limits,
            settings=case.settings,
            state=state,
            now_s=1.0,
            workspace=DecisionWorkspace(case.topology.n_gpus + 8),
        )
    own = DecisionWorkspace(8)
    assert DecisionWorkspace.sized(own, 8) is own
    assert DecisionWorkspace.sized(own, 16).n_gpus == 16


def test_the_cases_bind_the_limits_they_are_meant_to() -> None:
    """The fixture guards the cut paths only if its ticks actually bind the site limit."""
    stored = np.load(FIXTURE)
    for name in ("site_dr", "stale", "paced", "irregular"):
        site = len(cases()[name].topology.levels) - 1
        bound = [
            stored[f"{name}/{t}/budget_w_{site}"][0]
            >= stored[f"{name}/{t}/limit_w_{site}"][0] * (1.0 - 1e-6)
            for t in range(TICKS)
        ]
        assert any(bound), f"{name}: the site limit never binds"


if __name__ == "__main__":
    generate()
