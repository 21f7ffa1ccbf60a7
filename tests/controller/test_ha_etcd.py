"""Leadership on a real etcd (started per test): one leader, growing epochs, lapses, fencing."""

from __future__ import annotations

import asyncio
import time

import pytest

from controller.config import EtcdSection, HaSection
from controller.ha.base import EXPIRY_MARGIN_FRAC
from controller.ha.etcd import EtcdLeadership, _int
from controller.ha.runner import HaRunner
from tests.services import Etcd

pytestmark = pytest.mark.integration
TTL_S = 2  # etcd's shortest lease at its default election timeout


def _pair(etcd: Etcd) -> tuple[EtcdLeadership, EtcdLeadership]:
    section = EtcdSection(endpoints=[etcd.url], timeout_s=1.0)
    return (
        EtcdLeadership(section, site="s1", instance="ctl-a", lease_ttl_s=TTL_S),
        EtcdLeadership(section, site="s1", instance="ctl-b", lease_ttl_s=TTL_S),
    )


async def test_one_leader_and_the_epoch_grows_with_each_term(etcd: Etcd) -> None:
    a, b = _pair(etcd)
    try:
        assert await a.campaign()
        assert not await b.campaign()
        first = a.epoch()
        assert first > 0
        assert b.epoch() == first  # the standby sees the term it lost to
        assert await a.campaign()  # a renewal keeps the same term
        assert a.epoch() == first
        await a.resign()
        assert not a.is_leader()
        assert await b.campaign()
        assert b.epoch() > first
        assert not await a.campaign()
        assert a.epoch() == b.epoch()
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_silent_leader_lapses_before_the_standby_can_win(etcd: Etcd) -> None:
    a, b = _pair(etcd)
    try:
        assert await a.campaign()
        won_at = time.monotonic()
        lapsed_at = None
        while not await b.campaign():
            if lapsed_at is None and not a.is_leader():
                lapsed_at = time.monotonic()
            assert time.monotonic() - won_at < 3 * TTL_S, "standby never took over"
            await asyncio.sleep(0.1)
        took_at = time.monotonic()
        assert lapsed_at is not None, "both held the site at once"
        assert lapsed_at - won_at <= TTL_S * (1 - EXPIRY_MARGIN_FRAC) + 0.15
        assert took_at >= lapsed_at
        # The old leader, back from its pause, finds its lease gone and does not lead.
        assert not await a.campaign()
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_leader_cut_off_from_etcd_stops_at_its_lease_expiry(etcd: Etcd) -> None:
    a, b = _pair(etcd)
    try:
        assert await a.campaign()
        renewed_at = time.monotonic()
        etcd.stop()
        while a.is_leader():
            await a.campaign()  # renewals fail; the term runs out on the local clock
            await asyncio.sleep(0.05)
        assert time.monotonic() - renewed_at <= TTL_S
        assert a.errors > 0
        etcd.start()
        # Nobody held the site in between; once etcd is back exactly one process leads.
        deadline = time.monotonic() + 5 * TTL_S
        while not (a.is_leader() or b.is_leader()):
            await a.campaign()
            await b.campaign()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert a.is_leader() != b.is_leader()
    finally:
        await a.aclose()
        await b.aclose()


async def test_runner_counts_terms_and_calls_on_gain_once(etcd: Etcd) -> None:
    gains: list[int] = []
    section = HaSection(
        backend="etcd", lease_ttl_s=TTL_S, retry_s=0.2, etcd=EtcdSection(endpoints=[etcd.url])
    )
    runner = HaRunner(section, site="s1", name="ctl", on_gain=lambda: gains.append(1))
    other = HaRunner(section, site="s1", name="ctl")
    assert runner.instance != other.instance  # new per process start
    try:
        assert await runner.step()
        assert await runner.step()
        assert not await other.step()
        await runner.close()
        assert await other.step()
        assert gains == [1]
        assert runner.terms_won == 1
        assert other.term_changes == 1
    finally:
        await other.close()


@pytest.mark.parametrize("raw", [True, -1, 2**63, 1.5, "x", [1]])
def test_gateway_integers_are_range_checked(raw: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        _int(raw)


async def test_an_unreachable_store_is_a_counted_failure_not_an_exception() -> None:
    lead = EtcdLeadership(
        EtcdSection(endpoints=["http://127.0.0.1:9"], timeout_s=0.5),
        site="s1",
        instance="ctl-a",
        lease_ttl_s=TTL_S,
    )
    try:
        assert not await lead.campaign()
        assert lead.errors == 1
    finally:
        await lead.aclose()
