"""Leadership on etcd v3: a key held by a lease, spoken over etcd's JSON gateway with aiohttp.

Why the JSON gateway and aiohttp rather than a client library: the gateway (`/v3/kv/txn`,
`/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/lease/revoke`) is etcd's documented public API
and ships in every etcd server since 3.3; aiohttp is already the daemon's HTTP stack, so the
election adds no dependency and runs on the event loop. The gRPC clients for Python are
unmaintained (python-etcd3's last release was 2020) or synchronous (etcd3gw uses requests, so
every renewal would need a thread), and four calls is all an election needs.

A campaign is one transaction: if the key has never been created (`create_revision == 0`), put
it with this instance's id under a fresh lease; otherwise read who holds it. The epoch of a term
is the key's `create_revision`: the store's revision counter, which only grows, so a newer term
always has a larger epoch. The leader renews the lease every campaign and checks the key is still
its own; see `controller.ha.base` for how its term lapses on its own clock first.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog

from controller.config import EtcdSection
from controller.ha.base import Term

log = structlog.get_logger("rheostat.ha")

#: What a failed or nonsensical answer from the store raises: a counted failure, never a crash.
STORE_ERRORS = (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, AttributeError)
#: Largest answer read from the gateway; an election's answers are a few hundred bytes.
MAX_ANSWER_BYTES = 64 * 1024


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _int(value: Any) -> int:
    """An int64 as the gateway writes it (a decimal string; absent means 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"not an integer: {value!r}")
    number = int(value)
    if not 0 <= number < 2**63:
        raise ValueError(f"out of range: {number}")
    return number


class EtcdLeadership:
    """A `Leadership` on an etcd key (`section.key`, or `rheostat/<site>/leader`)."""

    def __init__(
        self,
        section: EtcdSection,
        *,
        site: str,
        instance: str,
        lease_ttl_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.section = section
        self.key = section.key or f"rheostat/{site}/leader"
        self.instance = instance
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self.term = Term(lease_ttl_s, clock)
        self._errors = 0
        self._epoch = 0
        self._lease: int | None = None
        self._endpoint = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def errors(self) -> int:
        return self._errors

    def is_leader(self) -> bool:
        return self._lease is not None and self.term.held()

    def epoch(self) -> int:
        return self._epoch

    # ------------------------------------------------------------------ gateway
    def _ssl(self) -> ssl.SSLContext | None:
        s = self.section
        if s.ca_file is None and s.cert_file is None:
            return None
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if s.cert_file is not None:
            context.load_cert_chain(str(s.cert_file), str(s.key_file) if s.key_file else None)
        return context

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the gateway; the answer's first JSON object (keepalive streams)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl() or False),
                timeout=aiohttp.ClientTimeout(total=self.section.timeout_s),
            )
        url = self.section.endpoints[self._endpoint].rstrip("/") + path
        try:
            async with self._session.post(url, data=orjson.dumps(body)) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES)
                if response.status != 200:
                    text = raw[:200].decode(errors="replace")
                    raise ValueError(f"etcd answered {response.status}: {text}")
        except (aiohttp.ClientError, TimeoutError):
            # The next call tries the next endpoint of the cluster.
            self._endpoint = (self._endpoint + 1) % len(self.section.endpoints)
            raise
        answer = orjson.loads(raw.split(b"\n", 1)[0])
        if not isinstance(answer, dict):
            raise TypeError("gateway answer is not an object")
        result = answer.get("result", answer)
        if not isinstance(result, dict):
            raise TypeError("gateway result is not an object")
        if "error" in answer:
            raise ValueError(f"etcd: {answer['error']}")
        return result

    async def _grant(self) -> int:
        answer = await self._call("/v3/lease/grant", {"TTL": self.lease_ttl_s})
        lease = _int(answer.get("ID"))
        if lease == 0:
            raise ValueError("lease grant without an ID")
        return lease

    async def _revoke(self, lease: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    # ------------------------------------------------------------------ election
    async def campaign(self) -> bool:
        sent_s = self.clock()
        try:
            if self.is_leader():
                await self._renew(sent_s)
            else:
                await self._try_take(sent_s)
        except (
            aiohttp.ClientError,
            TimeoutError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
        ) as exc:
            self._errors += 1
            log.warning("etcd election call failed", error=str(exc) or type(exc).__name__)
        return self.is_leader()

    async def _renew(self, sent_s: float) -> None:
        lease = self._lease
        assert lease is not None
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        if _int(answer.get("TTL")) <= 0:
            self._lost("lease expired in etcd")
            return
        owner = await self._call("/v3/kv/range", {"key": _b64(self.key)})
        kvs = owner.get("kvs") or []
        if not kvs or _int(kvs[0].get("lease")) != lease:
            self._lost("key no longer held by this lease")
            return
        self.term.renewed(sent_s)

    async def _try_take(self, sent_s: float) -> None:
        if self._lease is not None:
            # The term lapsed here first; free the key now rather than at the store's expiry.
            old, self._lease = self._lease, None
            await self._revoke(old)
        lease = await self._grant()
        key = _b64(self.key)
        answer = await self._call(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                ],
                "success": [
                    {"request_put": {"key": key, "value": _b64(self.instance), "lease": str(lease)}}
                ],
                "failure": [{"request_range": {"key": key}}],
            },
        )
        if answer.get("succeeded") is True:
            epoch = _int(answer["header"]["revision"])
            if epoch <= self._epoch:
                await self._revoke(lease)
                raise ValueError(f"etcd revision went back: {epoch} after {self._epoch}")
            self._lease, self._epoch = lease, epoch
            self.term.renewed(sent_s)
            log.info("leading", key=self.key, epoch=epoch, instance=self.instance)
            return
        await self._revoke(lease)
        responses = answer.get("responses") or []
        kvs = responses[0].get("response_range", {}).get("kvs") if responses else None
        if kvs:
            self._epoch = max(self._epoch, _int(kvs[0].get("create_revision")))

    def _lost(self, why: str) -> None:
        log.warning("leadership lost", reason=why, epoch=self._epoch)
        self._lease = None
        self.term.end()

    async def resign(self) -> None:
        lease, self._lease = self._lease, None
        self.term.end()
        if lease is not None:
            try:
                await self._revoke(lease)
            except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
                self._errors += 1
                log.warning("could not revoke the lease; it expires by itself", error=str(exc))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
