"""The daemon's subscription table: (topic filters, QoS, handler) rows that features register.

One table replaces hand-written subscribe calls and nested routing closures: on each broker
session the daemon subscribes to every row's filters, and each message goes to the rows'
handlers in registration order until one consumes it (returns True). A row may subscribe
nothing (telemetry taken by ingest workers still falls through to in-process ingest) or
handle without consuming (the synchronous jobs see job messages before the carbon plan does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: A message handler: True when the message was consumed.
Handler = Callable[[str, bytes], bool]


@dataclass(frozen=True, slots=True)
class Subscription:
    """One row: what to subscribe to, at which QoS, and who handles it."""

    filters: tuple[str, ...]
    qos: int
    handle: Handler
    name: str


@dataclass(eq=False)
class SubscriptionTable:
    """The rows, in the order their handlers see each message."""

    rows: list[Subscription] = field(default_factory=list)

    def add(self, name: str, handle: Handler, *, filters: Iterable[str] = (), qos: int = 0) -> None:
        """Register `handle` after every earlier row, subscribing `filters` at `qos`."""
        self.rows.append(Subscription(tuple(filters), qos, handle, name))

    def filters(self) -> list[tuple[str, int]]:
        """Each filter once (its first row's QoS), in registration order."""
        seen: dict[str, int] = {}
        for row in self.rows:
            for topic in row.filters:
                seen.setdefault(topic, row.qos)
        return list(seen.items())

    def dispatch(self) -> Handler:
        """One handler for the whole table (built once per session: the hot path is a loop)."""
        handlers = tuple(row.handle for row in self.rows)

        def handle(topic: str, payload: bytes) -> bool:
            return any(one(topic, payload) for one in handlers)

        return handle
