"""Leadership on a Kubernetes `coordination.k8s.io/v1` Lease, through kubernetes-asyncio.

The algorithm is client-go's leader election, reduced to what a controller needs:
- the holder renews `renewTime` by replacing the Lease at the `resourceVersion` it read, so a
  concurrent writer makes one of the two updates fail with 409 Conflict, never both succeed;
- a standby takes a Lease over only once it has watched the record stay unchanged for
  `leaseDurationSeconds` on its own monotonic clock (never by comparing `renewTime`, another
  host's wall clock, with its own), then increments `leaseTransitions`;
- the epoch of a term is `leaseTransitions + 1`: it grows with every change of holder, and a
  restarted controller is a new holder (its instance id is new per process).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from controller.config import KubernetesSection
from controller.ha.base import Term

log = structlog.get_logger("rheostat.ha")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: What a failed or nonsensical call raises besides `ApiException`: a counted failure.
STORE_ERRORS = (
    OSError,
    TimeoutError,
    ValueError,
    TypeError,
    AttributeError,
    config.ConfigException,
)
HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409


def _now() -> dt.datetime:
    """Written into `renewTime`/`acquireTime` for people reading the Lease; never compared."""
    return dt.datetime.now(dt.UTC)


class KubernetesLeadership:
    """A `Leadership` on the Lease `section.lease` (default `rheostat-<site>`)."""

    def __init__(
        self,
        section: KubernetesSection,
        *,
        site: str,
        instance: str,
        lease_ttl_s: int,
        clock: Callable[[], float] = time.monotonic,
        configuration: client.Configuration | None = None,
    ) -> None:
        self.section = section
        self.name = section.lease or f"rheostat-{site}"
        self.instance = instance
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self.term = Term(lease_ttl_s, clock)
        self._configuration = configuration
        self._api: client.ApiClient | None = None
        self._namespace = section.namespace or ""
        self._errors = 0
        self._epoch = 0
        #: The record as last read: (resourceVersion, when it was first seen that way).
        self._observed: tuple[str, float] | None = None

    @property
    def errors(self) -> int:
        return self._errors

    def is_leader(self) -> bool:
        return self.term.held()

    def epoch(self) -> int:
        return self._epoch

    async def _coordination(self) -> client.CoordinationV1Api:
        if self._api is None:
            configuration = self._configuration
            if configuration is None:
                configuration = client.Configuration()
                if self.section.in_cluster:
                    # kubernetes-asyncio leaves this one function unannotated.
                    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                else:
                    await config.load_kube_config(client_configuration=configuration)
            if not self._namespace:
                text = await asyncio.to_thread(SERVICE_ACCOUNT_NAMESPACE.read_text, "utf-8")
                self._namespace = text.strip()
            self._api = client.ApiClient(configuration)
        return client.CoordinationV1Api(self._api)

    def _spec(self, transitions: int, acquired: Any) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.instance,
            lease_duration_seconds=self.lease_ttl_s,
            acquire_time=acquired,
            renew_time=_now(),
            lease_transitions=transitions,
        )

    async def campaign(self) -> bool:
        sent_s = self.clock()
        try:
            await self._round(sent_s)
        except ApiException as exc:
            self._errors += 1
            if exc.status == HTTP_CONFLICT:
                log.info("lease changed under us; reading it again", lease=self.name)
            else:
                log.warning("lease call failed", status=exc.status, reason=exc.reason)
        except (
            OSError,
            TimeoutError,
            ValueError,
            TypeError,
            AttributeError,
            config.ConfigException,
        ) as exc:
            self._errors += 1
            log.warning("lease call failed", error=str(exc) or type(exc).__name__)
        return self.is_leader()

    async def _round(self, sent_s: float) -> None:
        api = await self._coordination()
        timeout = self.section.timeout_s
        try:
            lease = await api.read_namespaced_lease(
                self.name, self._namespace, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status != HTTP_NOT_FOUND:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self._namespace),
                spec=self._spec(0, _now()),
            )
            await api.create_namespaced_lease(self._namespace, body, _request_timeout=timeout)
            self._took(1, sent_s)
            return
        spec = lease.spec or client.V1LeaseSpec()
        transitions = int(spec.lease_transitions or 0)
        if transitions < 0:
            raise ValueError(f"leaseTransitions {transitions} < 0")
        version = str(lease.metadata.resource_version)
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, sent_s)
        self._epoch = max(self._epoch, transitions + 1)
        if spec.holder_identity == self.instance:
            if not self.term.held():
                # Our term lapsed here; a Lease still naming us is taken anew, as a new term.
                lease.spec = self._spec(transitions + 1, _now())
                await api.replace_namespaced_lease(
                    self.name, self._namespace, lease, _request_timeout=timeout
                )
                self._took(transitions + 2, sent_s)
                return
            lease.spec = self._spec(transitions, spec.acquire_time)
            await api.replace_namespaced_lease(
                self.name, self._namespace, lease, _request_timeout=timeout
            )
            self.term.renewed(sent_s)
            return
        self.term.end()
        duration_s = float(spec.lease_duration_seconds or self.lease_ttl_s)
        unchanged_since = self._observed[1]
        if spec.holder_identity and sent_s - unchanged_since < duration_s:
            return  # someone holds it and renewed within its duration, as far as we can tell
        lease.spec = self._spec(transitions + 1, _now())
        await api.replace_namespaced_lease(
            self.name, self._namespace, lease, _request_timeout=timeout
        )
        self._took(transitions + 2, sent_s)

    def _took(self, epoch: int, sent_s: float) -> None:
        self._epoch = max(self._epoch, epoch)
        self._observed = None
        self.term.renewed(sent_s)
        log.info("leading", lease=self.name, epoch=self._epoch, instance=self.instance)

    async def resign(self) -> None:
        """Clear the holder so a standby takes over at once (client-go's ReleaseOnCancel)."""
        held = self.term.held()
        self.term.end()
        if not held or self._api is None:
            return
        api = client.CoordinationV1Api(self._api)
        try:
            lease = await api.read_namespaced_lease(
                self.name, self._namespace, _request_timeout=self.section.timeout_s
            )
            if lease.spec is None or lease.spec.holder_identity != self.instance:
                return
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            await api.replace_namespaced_lease(
                self.name, self._namespace, lease, _request_timeout=self.section.timeout_s
            )
        except (ApiException, OSError, TimeoutError) as exc:
            self._errors += 1
            log.warning("could not release the lease; it expires by itself", error=str(exc))

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None
