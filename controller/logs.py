"""structlog set-up: JSON lines in production, a readable console on a terminal.

Configured once, at the entry point; modules take a bound logger from `structlog.get_logger()`.
The daemon logs each tick at DEBUG and a `TickSummary` at INFO once a period.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import Literal

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    """A logger on whatever `sys.stderr` is now, not what it was at configuration time.

    The daemon's stderr never changes, but an embedding program (a test runner, a notebook) may
    swap it; a logger holding the old stream would then write to a closed file.
    """
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info"
) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:  # the console renderer formats exceptions itself
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


@dataclass(eq=False, kw_only=True)
class TickSummary:
    """Per-tick figures folded into one INFO line per period; each tick itself is DEBUG.

    A tick a second is 86,400 lines a day: the summary says the same at a glance, once a minute
    by default (`logging.summary_period_s`). Timed on the monotonic clock. Units: W, s.
    """

    ticks: int = 0
    site_power_sum_w: float = 0.0
    site_power_max_w: float = 0.0
    site_allowed_min_w: float = math.inf
    stale_racks_max: int = 0
    commands_at_start: int | None = None
    started_s: float | None = None

    def observe(
        self,
        now_s: float,
        *,
        period_s: float,
        site_power_w: float,
        site_allowed_w: float,
        stale_racks: int,
        commands_total: int,
    ) -> dict[str, float | int] | None:
        """Fold in one tick; the summary's fields once `period_s` has passed since the first."""
        if self.started_s is None or self.commands_at_start is None:
            self.started_s, self.commands_at_start = now_s, commands_total
        self.ticks += 1
        self.site_power_sum_w += site_power_w
        self.site_power_max_w = max(self.site_power_max_w, site_power_w)
        self.site_allowed_min_w = min(self.site_allowed_min_w, site_allowed_w)
        self.stale_racks_max = max(self.stale_racks_max, stale_racks)
        if now_s - self.started_s < period_s:
            return None
        out: dict[str, float | int] = {
            "period_s": round(now_s - self.started_s, 1),
            "ticks": self.ticks,
            "site_power_mean_w": round(self.site_power_sum_w / self.ticks, 1),
            "site_power_max_w": round(self.site_power_max_w, 1),
            "site_allowed_min_w": round(self.site_allowed_min_w, 1),
            "stale_racks_max": self.stale_racks_max,
            "commands": commands_total - self.commands_at_start,
        }
        self.ticks, self.site_power_sum_w, self.site_power_max_w = 0, 0.0, 0.0
        self.site_allowed_min_w, self.stale_racks_max = math.inf, 0
        self.started_s, self.commands_at_start = now_s, commands_total
        return out
