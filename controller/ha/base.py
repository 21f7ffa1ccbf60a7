"""What the daemon asks of a leader-election engine, and the engine for a lone controller.

`campaign` and `resign` talk to the lease store; `is_leader` and `epoch` only read what the last
campaign learned, so the tick and the publish path ask them without waiting on the network. A
leader's term ends on its own clock before the store's lease can: it counts from when it *sent*
its last successful renewal, minus a margin, so a leader cut off from the store stops commanding
before any other process can be granted the lease.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from typing import Protocol

#: Share of the lease TTL a leader gives up early, for clock-rate differences between hosts.
EXPIRY_MARGIN_FRAC = 0.1
#: An instance id as the wire protocol allows it (`ctl`).
INSTANCE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Leadership(Protocol):
    """One process's side of a site's election."""

    async def campaign(self) -> bool:
        """Renew the term this process holds, or try to take a free one; whether it leads now.

        Never raises for a store that is unreachable or answers nonsense: that is a failed
        renewal, counted in `errors`, and the term lapses on its own clock.
        """
        ...

    def is_leader(self) -> bool:
        """Whether this process may command now (its term has not lapsed on its own clock)."""
        ...

    def epoch(self) -> int:
        """The newest term's epoch seen in the store (held here or elsewhere); 0 before any.

        It comes from the store (an etcd revision, a Lease's transitions), so it only grows.
        """
        ...

    async def resign(self) -> None:
        """Give the term up now, so a standby takes over without waiting for the lease."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once, after `resign`."""
        ...

    @property
    def errors(self) -> int:
        """Failed calls to the store so far."""
        ...


def instance_id(name: str) -> str:
    """A controller instance id, new per process start: `name`, the pid and a random tag.

    Fits the wire's `ctl` (1-64 chars of `[A-Za-z0-9._:-]`); characters outside it become `-`.
    """
    tag = f"-{os.getpid()}-{secrets.token_hex(4)}"
    base = re.sub(r"[^A-Za-z0-9._:-]", "-", name)[: 64 - len(tag)]
    return base + tag


class Standalone:
    """`ha.backend: none`: the only controller of its site, always leading, epoch 0."""

    errors = 0

    async def campaign(self) -> bool:
        return True

    def is_leader(self) -> bool:
        return True

    def epoch(self) -> int:
        return 0

    async def resign(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Term:
    """A held term's local deadline on the monotonic clock. Units: s."""

    def __init__(self, lease_ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self.until_s = -float("inf")

    def renewed(self, sent_at_s: float) -> None:
        """A renewal sent at `sent_at_s` succeeded: the store's lease runs at least TTL from
        when it received it, which was later."""
        self.until_s = sent_at_s + self.lease_ttl_s * (1.0 - EXPIRY_MARGIN_FRAC)

    def end(self) -> None:
        self.until_s = -float("inf")

    def held(self) -> bool:
        return self.clock() < self.until_s
