"""Refused messages beside telemetry, counted by kind (topic family) and reason.

Both labels come from fixed sets, so the table stays small whatever the messages say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(eq=False)
class MessageRejections:
    """Refused messages beside telemetry, by kind (topic family) and reason.

    Decoders that refuse a message count it here with their typed reason (grid events, job
    reports), and the daemon's receive loop counts any exception one message causes as
    `internal_error` (a fault) before going on. Both labels come from fixed sets (`KINDS`,
    `REASONS`), so the table stays small whatever the messages say.
    """

    KINDS: ClassVar[tuple[str, ...]] = (
        "telemetry",
        "grid_event",
        "job",
        "facility",
        "signal",
        "other",
    )
    REASONS: ClassVar[tuple[str, ...]] = (
        "malformed",
        "out_of_range",
        "too_large",
        "wrong_version",
        "internal_error",
    )
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def kind_of(cls, topic: str, site_prefix: str) -> str:
        """The topic family of `topic` under `site_prefix` (`rheostat/v1/<site>/`)."""
        if not topic.startswith(site_prefix):
            return "other"
        family = topic[len(site_prefix) :].split("/", 2)
        kind = {
            "telemetry": "telemetry",
            "jobs": "job",
            "facility": "facility",
        }.get(family[0])
        if kind is None and family[0] == "grid" and len(family) > 1:
            kind = {"event": "grid_event", "signal": "signal"}.get(family[1])
        return kind or "other"

    def count(self, kind: str, exc: BaseException) -> None:
        reason = getattr(exc, "reason", "internal_error")
        if reason not in self.REASONS:
            reason = "internal_error"
        key = (kind if kind in self.KINDS else "other", reason)
        self.counts[key] = self.counts.get(key, 0) + 1
