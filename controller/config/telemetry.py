"""The policy file's `telemetry` section: bounds on what rack agents and the scheduler may bring."""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

from controller.config.base import Section

#: Workload-class codes are int16 in the fleet arrays (`FleetState.workload_class`).
MAX_CLASSES: Final = 2**15 - 1


class TelemetrySection(Section):
    """Bounds on what rack agents and the scheduler may bring (the policy's `telemetry` section):
    every table keyed by network input has a configured size.
    """

    max_clock_skew_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    """Telemetry stamped further than this from the site's time (the median of the racks'
    clocks) is rejected as `clock_skew`. Units: s.
    """
    max_classes: Annotated[int, Field(ge=1, le=MAX_CLASSES)] = 1024
    """Distinct workload-class names remembered; later names count as the unknown class."""
    max_jobs: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """Synchronous jobs the scheduler may report at once."""
