"""Leadership on a Kubernetes Lease, against a small local fake of the Lease API.

No Kubernetes API server runs on this machine, so the fake below serves the four calls the
election makes (`GET`/`POST`/`PUT` of `coordination.k8s.io/v1` Leases) with the API server's
optimistic concurrency: a `PUT` at a stale `resourceVersion` is 409 Conflict. Everything on the
client side (kubernetes-asyncio, its serialisation, the election) is the real code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from controller.config import KubernetesSection
from controller.ha.kubernetes import KubernetesLeadership
from tests.services import free_port

NS = "power"
TTL_S = 1
BASE = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


class FakeLeaseApi:
    """Leases by name, each with a resourceVersion that every write bumps."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.conflicts = 0

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body = {**body, "apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
        body["metadata"] = {**body["metadata"], "resourceVersion": str(self.version)}
        self.leases[body["metadata"]["name"]] = body
        return body

    async def get(self, request: web.Request) -> web.Response:
        lease = self.leases.get(request.match_info["name"])
        if lease is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return web.json_response(lease)

    async def post(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["metadata"]["name"] in self.leases:
            return web.json_response({"kind": "Status", "code": 409}, status=409)
        return web.json_response(self._stored(body), status=201)

    async def put(self, request: web.Request) -> web.Response:
        body = await request.json()
        current = self.leases.get(request.match_info["name"])
        if current is None or (
            body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]
        ):
            self.conflicts += 1
            return web.json_response({"kind": "Status", "code": 409}, status=409)
        return web.json_response(self._stored(body))


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeLeaseApi, str]]:
    fake = FakeLeaseApi()
    app = web.Application()
    app.router.add_get(BASE + "/{name}", fake.get)
    app.router.add_post(BASE, fake.post)
    app.router.add_put(BASE + "/{name}", fake.put)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _lead(url: str, instance: str) -> KubernetesLeadership:
    configuration = client.Configuration(host=url)
    return KubernetesLeadership(
        KubernetesSection(namespace=NS, timeout_s=1.0),
        site="s1",
        instance=instance,
        lease_ttl_s=TTL_S,
        configuration=configuration,
    )


async def test_first_campaign_creates_the_lease_and_leads(api: tuple[FakeLeaseApi, str]) -> None:
    fake, url = api
    a, b = _lead(url, "ctl-a"), _lead(url, "ctl-b")
    try:
        assert await a.campaign()
        assert a.epoch() == 1
        spec = fake.leases["rheostat-s1"]["spec"]
        assert spec["holderIdentity"] == "ctl-a"
        assert spec["leaseDurationSeconds"] == TTL_S
        assert not await b.campaign()
        assert b.epoch() == 1
        assert await a.campaign()  # renewal: same term
        assert a.epoch() == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_standby_takes_over_only_after_the_record_stood_still(
    api: tuple[FakeLeaseApi, str],
) -> None:
    fake, url = api
    a, b = _lead(url, "ctl-a"), _lead(url, "ctl-b")
    try:
        assert await a.campaign()
        assert not await b.campaign()
        await asyncio.sleep(TTL_S / 2)
        assert await a.campaign()  # a renewal changes the record: the standby's wait restarts
        assert not await b.campaign()
        await asyncio.sleep(TTL_S / 2)
        assert not await b.campaign()
        assert a.is_leader()
        await asyncio.sleep(TTL_S / 2 + 0.1)  # a stopped renewing a whole lease ago
        assert not a.is_leader()  # its term lapsed on its own clock first
        assert await b.campaign()
        assert b.epoch() == 2
        assert fake.leases["rheostat-s1"]["spec"]["leaseTransitions"] == 1
        assert not await a.campaign()
        assert a.epoch() == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_concurrent_write_loses_on_conflict(api: tuple[FakeLeaseApi, str]) -> None:
    fake, url = api
    a, b = _lead(url, "ctl-a"), _lead(url, "ctl-b")
    try:
        assert await a.campaign()
        await asyncio.sleep(TTL_S + 0.1)
        assert not await b.campaign()  # first sight of the record: starts b's wait
        await asyncio.sleep(TTL_S + 0.1)
        # Both race for the expired Lease: the API server lets exactly one write win.
        results = await asyncio.gather(a.campaign(), b.campaign())
        assert sorted(results) == [False, True]
        assert fake.conflicts >= 1
        assert a.errors + b.errors >= 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_resign_frees_the_lease_for_the_standby(api: tuple[FakeLeaseApi, str]) -> None:
    fake, url = api
    a, b = _lead(url, "ctl-a"), _lead(url, "ctl-b")
    try:
        assert await a.campaign()
        await a.resign()
        assert fake.leases["rheostat-s1"]["spec"]["holderIdentity"] == ""
        assert await b.campaign()
        assert b.epoch() == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_unreachable_api_server_is_a_counted_failure() -> None:
    lead = _lead(f"http://127.0.0.1:{free_port()}", "ctl-a")
    try:
        assert not await lead.campaign()
        assert lead.errors == 1
    finally:
        await lead.aclose()
