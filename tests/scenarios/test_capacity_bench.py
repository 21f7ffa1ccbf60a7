"""Hosted capacity: how many GPUs the `oversubscribed` site's breakers and contract serve.

A short version of `rheostat bench capacity --scenario oversubscribed` (the first `DURATION_S`
seconds of the scenario at each step; docs/benchmarks-capacity-dr.md has the full-length figures)
and the scan's bookkeeping on made-up steps.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.capacity import (
    MIN_CAPACITY_PCT,
    MIN_VS_STATIC,
    _capacity,
    scan,
    step_misses,
    work_misses,
)
from simulator.scenario import load_scenario

DURATION_S = 600.0


RACK_BOUND = (
    "out of reach at any fleet size: each rack's breaker is rated 0.75 of the rack's full draw, "
    "so a rack of the synchronous Flex 1 job runs capped whatever the number of racks; in the "
    "first 600 s Flex 1 keeps 0.889 of its work under Rheostat (static 0.867) against its 0.9 "
    "floor, and the oracle only 0.895, so no step, the base included, is hosted (full length: "
    "the same at every step from -50 % to the base, docs/benchmarks-capacity-dr.md)"
)


def step(misses: list[str]) -> dict[str, Any]:
    return {"misses": misses}


def test_capacity_goes_up_while_hosted_and_down_when_the_base_misses() -> None:
    ok = step([])
    bad = step(["tier0=0.9900"])

    def hosted(row: dict[str, Any]) -> bool:
        return not row["misses"]

    assert _capacity({0: ok, 1: ok, 2: bad}, hosted) == (1, 2)
    assert _capacity({0: ok, 1: ok}, hosted) == (1, None)
    assert _capacity({0: bad, 1: ok}, hosted) == (None, 0)
    assert _capacity({-2: ok, -1: bad, 0: bad}, hosted) == (-2, -1)
    assert _capacity({-1: bad, 0: bad}, hosted) == (None, -1)


def test_a_step_misses_on_trips_limits_tiers_and_floors() -> None:
    summary: dict[str, Any] = {
        "breaker_trips": 0,
        "scoreboard": {"within_limits": True, "breaker_over_s": 0.0, "site_over_s": 0.0},
        "throughput_retained": {"tier0": 1.0, "tier1": 0.95, "tier2": 0.8, "tier3": 0.6},
        "seconds_below_floor": {"tier0": 0.0, "tier1": 0.0, "tier2": 0.0, "tier3": 0.0},
    }
    assert step_misses(summary) == []
    assert work_misses({"tier0": 0.994}) == ["tier0=0.9940"]
    assert work_misses({"tier1": 0.89, "tier2": 0.76, "tier3": 0.49}) == [
        "tier1=0.8900<floor",
        "tier3=0.4900<floor",
    ]
    summary["seconds_below_floor"]["tier2"] = 3.0
    summary["breaker_trips"] = 1
    assert step_misses(summary) == ["trips=1", "below-floor2=3s"]


@pytest.fixture(scope="module")
def oversubscribed() -> dict[str, Any]:
    base = load_scenario("oversubscribed").shortened(DURATION_S)
    # Up from the base only: the full benchmark also scans down when the base misses.
    return scan(base, ("static", "rheostat"), step=0.05, max_extra=0.5, min_extra=0.0)


def test_the_oracle_bounds_the_base(oversubscribed: dict[str, Any]) -> None:
    """Why the targets are missed: even the oracle's Flex 1 work is under its floor."""
    for out in oversubscribed["controllers"].values():
        [base] = [row for row in out["steps"] if row["extra_pct"] == 0.0]
        assert base["oracle_retained"]["tier1"] < 0.9
        assert "tier1" in " ".join(base["misses"])


def test_hosted_steps_keep_every_limit(oversubscribed: dict[str, Any]) -> None:
    for out in oversubscribed["controllers"].values():
        for row in out["steps"]:
            if not row["misses"]:
                assert row["breaker_trips"] == 0
                assert row["within_limits"]
                assert row["throughput_retained"]["tier0"] >= 0.995


@pytest.mark.xfail(strict=True, reason=RACK_BOUND)
def test_rheostat_capacity_target(oversubscribed: dict[str, Any]) -> None:
    ours = oversubscribed["controllers"]["rheostat"]["vs_contract_pct"]
    assert ours is not None
    assert ours >= MIN_CAPACITY_PCT


@pytest.mark.xfail(strict=True, reason=RACK_BOUND)
def test_rheostat_hosts_more_than_static(oversubscribed: dict[str, Any]) -> None:
    ours = oversubscribed["controllers"]["rheostat"]["vs_contract_pct"]
    static = oversubscribed["controllers"]["static"]["vs_contract_pct"]
    assert ours is not None
    assert ours >= MIN_VS_STATIC * max(static or 0.0, 0.0)
