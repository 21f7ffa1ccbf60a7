"""Turning what a source says into `DrEvent`s: the MQTT event message and policy-file events.

MQTT event message on `rheostat/v1/<site>/grid/event` (JSON, QoS 1; see docs/demand-response.md):

    {"v": 1, "action": "create", "event_id": "peak-0714", "start": 1764300000.0,
     "duration_s": 10800, "reduction_frac": 0.25, "ramp_s": 30, "recovery_s": 300,
     "modification": 0}

`action` is `create` (also used for a modification, with a higher `modification`) or `cancel`
(only `event_id` needed). `start` is Unix seconds or ISO 8601 with a zone; exactly one of
`reduction_frac`, `limit_kw` or `simple_level` sets the target. `ramp_s` and `recovery_s`
default to the policy's values. Ranges: `modification` a safe integer (0 to 2**53 - 1), times in
[0, 1e11] Unix s, durations up to a year, `limit_kw` up to 1e7; no NaN or infinity anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.grid.config import (
    MAX_EVENT_SECONDS,
    MAX_LIMIT_KW,
    MAX_MODIFICATION,
    MAX_UNIX_S,
    DemandResponseSection,
    ScheduledEvent,
)
from policies.dr import DrEvent, reduction_for_simple_level
from policies.errors import PolicyError, ProtocolError

MAX_MESSAGE_BYTES = 16 * 1024
#: pydantic error types that mean "a number outside its range" (counted as `out_of_range`).
_RANGE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
)


class EventMessage(BaseModel):
    """Every field range-checked: finite numbers in documented ranges, safe integers."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=False)

    v: Literal[1]
    action: Literal["create", "cancel"]
    event_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    start: datetime | Annotated[float, Field(ge=0, le=MAX_UNIX_S)] | None = None
    duration_s: Annotated[float, Field(gt=0, le=MAX_EVENT_SECONDS)] | None = None
    reduction_frac: Annotated[float, Field(ge=0, lt=1)] | None = None
    limit_kw: Annotated[float, Field(gt=0, le=MAX_LIMIT_KW)] | None = None
    simple_level: Annotated[int, Field(ge=0, le=3)] | None = None
    ramp_s: Annotated[float, Field(ge=0, le=MAX_EVENT_SECONDS)] | None = None
    recovery_s: Annotated[float, Field(gt=0, le=MAX_EVENT_SECONDS)] | None = None
    modification: Annotated[int, Field(ge=0, le=MAX_MODIFICATION)] = 0

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.action == "create":
            if self.start is None or self.duration_s is None:
                raise ValueError("create needs start and duration_s")
            targets = [self.reduction_frac, self.limit_kw, self.simple_level]
            if sum(x is not None for x in targets) != 1:
                raise ValueError("give exactly one of reduction_frac, limit_kw, simple_level")
        return self


@dataclass(frozen=True, slots=True)
class Cancel:
    event_id: str


def _seconds(value: datetime | float) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("times need a zone (e.g. 2026-07-14T15:00:00-07:00)")
        seconds = value.timestamp()
        if not 0 <= seconds <= MAX_UNIX_S:
            raise ValueError(f"time outside [1970, year 5000]: {value.isoformat()}")
        return seconds
    return float(value)


def parse_event_message(
    payload: bytes, *, now_s: float, section: DemandResponseSection
) -> DrEvent | Cancel:
    """Validate one MQTT event message; raises `ProtocolError` with the reason on bad input."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"grid event message over {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = EventMessage.model_validate_json(payload)
        if msg.action == "cancel":
            return Cancel(msg.event_id)
        assert msg.start is not None
        assert msg.duration_s is not None
        reduction = msg.reduction_frac
        if msg.simple_level is not None:
            reduction = reduction_for_simple_level(msg.simple_level, section.simple_levels)
        return DrEvent(
            event_id=msg.event_id,
            source="mqtt",
            notified_s=now_s,
            start_s=_seconds(msg.start),
            duration_s=msg.duration_s,
            ramp_s=section.default_ramp_s if msg.ramp_s is None else msg.ramp_s,
            recovery_s=section.default_recovery_s if msg.recovery_s is None else msg.recovery_s,
            reduction_frac=reduction,
            limit_w=None if msg.limit_kw is None else msg.limit_kw * 1e3,
            modification=msg.modification,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        reason = "out_of_range" if first["type"] in _RANGE_ERRORS else "malformed"
        raise ProtocolError(f"grid event: {where}: {first['msg']}", reason=reason) from None
    except (ValueError, PolicyError) as exc:
        raise ProtocolError(f"grid event: {exc}") from None


def scheduled_event(spec: ScheduledEvent, section: DemandResponseSection) -> DrEvent:
    """A policy-file event. Known since the file was written, so its ramp may start early."""
    start_s = _seconds(spec.start)
    ramp_s = section.default_ramp_s if spec.ramp_s is None else spec.ramp_s
    return DrEvent(
        event_id=spec.id,
        source="schedule",
        notified_s=start_s - ramp_s,
        start_s=start_s,
        duration_s=spec.duration_s,
        ramp_s=ramp_s,
        recovery_s=section.default_recovery_s if spec.recovery_s is None else spec.recovery_s,
        reduction_frac=spec.reduction_frac,
        limit_w=None if spec.limit_kw is None else spec.limit_kw * 1e3,
    )
