"""Failover with real processes: `rheostat bench failover` on real etcd and Mosquitto.

Two `rheostat run` daemons per scenario on a shortened clock (0.2 s tick, 2 s lease, 6 s
command TTL; the same budget rule as the defaults of 1 s, 10 s and 30 s): the leader is killed,
both start at once, or etcd stops under them.
"""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench import failover
from tests.services import require_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    failover.add_arguments(parser)
    return parser.parse_args(["--racks", "4", "--observe", "3"])


@pytest.fixture(autouse=True)
def _binaries() -> None:
    require_binary("mosquitto")
    require_binary("etcd")


async def test_kill_9_of_the_leader_fails_over_inside_the_command_ttl() -> None:
    args = _args()
    out = await failover._kill(args)
    assert out["failover_s"] < args.lease_ttl + args.retry + 3 * args.tick + 1.0
    assert out["failover_s"] < args.command_ttl * 0.5
    assert out["racks_safe_caps"] == 0
    assert out["seconds_over_limit"] == 0
    assert out["breaker_trips"] == 0
    assert out["max_leaders_at_once"] == 1
    assert out["non_leader_applied"] == 0


async def test_two_controllers_started_at_once_one_commands() -> None:
    out = await failover._simultaneous(_args())
    assert out["commanding_controllers"] == 1
    assert out["commands"] > 0
    assert out["non_leader_applied"] == 0
    assert out["max_leaders_at_once"] == 1


async def test_a_leader_cut_off_from_etcd_stops_at_lease_expiry() -> None:
    args = _args()
    out = await failover._cutoff(args)
    assert out["stopped_commanding_s"] <= args.lease_ttl  # < 0: nothing was due after the cut
    assert out["standby_commands"] == 0
    assert out["max_leaders_at_once"] == 1
    # racks held their caps for the TTL, then every one fell back on its own
    assert out["racks_fell_back_early"] == 0
    assert out["racks_safe_caps_after_ttl"] == out["racks"]


def test_the_benchmark_is_registered() -> None:
    from bench._registry import modules

    assert modules()["failover"] is failover
    assert asyncio.iscoroutinefunction(failover.RUNNERS["kill"])
