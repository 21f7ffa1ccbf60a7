"""structlog set-up: JSON lines in production, a readable console on a terminal.

Configured once, at the entry point; modules take a bound logger from `structlog.get_logger()`.
"""

from __future__ import annotations

import logging
import sys
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
