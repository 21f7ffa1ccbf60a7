"""The policy file's `ha:` section: which engine elects the site's one commanding controller.

Timing is chosen so a failover completes inside the command TTL: a leader that dies is replaced
within `lease_ttl_s + retry_s` (its lease must run out first), and the new leader commands on its
first tick, while every rack still holds a command refreshed at most `command_ttl_s *
refresh_frac` ago. `PolicyFile` checks that budget with `failover_budget_error`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from controller.config.base import Section

#: etcd accepts lease TTLs in whole seconds; its own minimum is a few election timeouts.
MIN_LEASE_TTL_S = 1


class EtcdSection(Section):
    """etcd v3, spoken over its JSON gateway (`/v3/...`) on the client URLs.

    `key` defaults to `rheostat/<site>/leader`. TLS files, when given, are used for every
    endpoint (`https://` URLs).
    """

    # A pydantic field (ruff cannot see that `Section` is a model): pydantic copies the default.
    endpoints: Annotated[list[str], Field(min_length=1)] = ["http://127.0.0.1:2379"]  # noqa: RUF012
    """etcd client URLs, tried in order."""
    key: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """The leader key; unset: `rheostat/<site>/leader`."""
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0
    """Timeout of each request to etcd. Units: s."""
    ca_file: Path | None = None
    """CA certificate(s) etcd's certificate is checked against (PEM)."""
    cert_file: Path | None = None
    """Client certificate for etcd (PEM)."""
    key_file: Path | None = None
    """Private key of the client certificate (PEM)."""


class KubernetesSection(Section):
    """A `coordination.k8s.io/v1` Lease. `namespace` defaults to the pod's own namespace (read
    from the service account); `lease` defaults to `rheostat-<site>`. `in_cluster: false` reads
    the kubeconfig instead (a controller run from a workstation)."""

    namespace: str | None = None
    """Namespace of the Lease; unset: the pod's own (from its service account)."""
    lease: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """Name of the Lease; unset: `rheostat-<site>`."""
    in_cluster: bool = True
    """Use the pod's service account; false reads the kubeconfig (a workstation)."""
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0
    """Timeout of each request to the API server. Units: s."""


class HaSection(Section):
    """Leader election and fencing. `none`: this process is the site's only controller.

    Units: s. `lease_ttl_s` is how long a leader's term outlives its last renewal (renewed every
    third of it); `retry_s` is how often a standby tries to take the lease.
    """

    backend: Literal["none", "etcd", "kubernetes"] = "none"
    """Where leadership is held: none (a lone controller), etcd or kubernetes."""
    lease_ttl_s: Annotated[int, Field(ge=MIN_LEASE_TTL_S, le=60)] = 10
    """How long a leader's term outlives its last renewal (renewed every third of it). Units: s."""
    retry_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    """How often a standby tries to take a free lease. Units: s."""
    etcd: EtcdSection = EtcdSection()
    """The etcd backend's connection."""
    kubernetes: KubernetesSection = KubernetesSection()
    """The Kubernetes backend's Lease."""

    @model_validator(mode="after")
    def _renewal_fits(self) -> Self:
        if self.retry_s >= self.lease_ttl_s:
            raise ValueError("retry_s must be shorter than lease_ttl_s")
        return self

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    @property
    def worst_failover_s(self) -> float:
        """Longest time from a leader's death to the new leader's first commands. Units: s."""
        return self.lease_ttl_s + self.retry_s

    def failover_budget_error(
        self, *, command_ttl_s: float, refresh_frac: float, tick_period_s: float
    ) -> str | None:
        """Why a failover could outlast the commands racks hold; None when it cannot.

        A rack's command in force was refreshed at most `command_ttl_s * refresh_frac` plus one
        tick before the leader died, so it has at least the rest of its TTL left; the new leader
        needs the worst failover plus one tick to decide and one more to send.
        """
        if not self.enabled:
            return None
        left_s = command_ttl_s * (1.0 - refresh_frac) - tick_period_s
        needed_s = self.worst_failover_s + 2 * tick_period_s
        if needed_s > left_s:
            return (
                f"ha: a failover can take {needed_s:g} s (lease_ttl_s + retry_s + 2 ticks) but a "
                f"rack's command may have only {left_s:g} s left "
                "(control.command_ttl_s * (1 - refresh_frac) - tick_period_s)"
            )
        return None
