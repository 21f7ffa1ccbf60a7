"""Grid events: a grid operator or energy-management system -> controller (QoS 1).

On `grid/event/<event_id>` (or the plain `grid/event`):

    {"v": 1, "action": "create", "event_id": "peak-0714", "start": 1764300000.0,
     "duration_s": 10800, "reduction_frac": 0.25, "ramp_s": 30, "recovery_s": 300,
     "modification": 0}

`action` is `create` (also used for a modification, with a higher `modification`) or `cancel`
(only `event_id` needed). `start` is Unix seconds or ISO 8601 with a zone; exactly one of
`reduction_frac`, `limit_kw` or `simple_level` sets the target. `ramp_s` and `recovery_s`
default to the policy's values (None here). Ranges: `modification` a safe integer, times in
[0, 1e11] Unix s, durations up to a year, `limit_kw` up to 1e7; no NaN or infinity anywhere.
The controller answers, retained, on `grid/response/<event_id>` with `{"event_id", "opt",
"reason"}` (or `{"event_id", "cancelled"}`).

The message is a pydantic model (ISO 8601 times with zones are pydantic's to parse); its errors
map onto the reasons every other message kind is counted under (`out_of_range`, `malformed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.wire.protocol import MAX_SAFE_INT
from policies.errors import ProtocolError

#: Ranges of what grid sources may say (the MQTT event message, OpenADR events).
#: `modification` is a safe integer: it is stored in SQLite and compared, never overflowed.
MAX_MODIFICATION: Final = MAX_SAFE_INT
#: Unix seconds up to the year 5000; durations, ramps and recoveries up to a year. Units: s.
MAX_UNIX_S: Final = 1.0e11
MAX_EVENT_SECONDS: Final = 366 * 86_400.0
#: An absolute DR limit above 10 GW is no site's. Units: kW.
MAX_LIMIT_KW: Final = 1.0e7
MAX_MESSAGE_BYTES: Final = 16 * 1024
#: pydantic error types that mean "a number outside its range" (counted as `out_of_range`).
_RANGE_ERRORS: Final = frozenset(
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
    """A grid event withdrawn by its sender."""

    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GridEvent:
    """A validated `create`: times in Unix s, one target set, None for the policy's default."""

    event_id: str
    start_s: float
    duration_s: float
    reduction_frac: float | None
    limit_kw: float | None
    simple_level: int | None
    ramp_s: float | None
    recovery_s: float | None
    modification: int


def unix_seconds(value: datetime | float) -> float:
    """Unix seconds of an ISO 8601 time (which must carry a zone) or of a number as it is."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("times need a zone (e.g. 2026-07-14T15:00:00-07:00)")
        seconds = value.timestamp()
        if not 0 <= seconds <= MAX_UNIX_S:
            raise ValueError(f"time outside [1970, year 5000]: {value.isoformat()}")
        return seconds
    return float(value)


def decode_grid_event(payload: bytes) -> GridEvent | Cancel:
    """Validate one grid-event message; raises `ProtocolError` with the reason on bad input."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"grid event message over {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = EventMessage.model_validate_json(payload)
        if msg.action == "cancel":
            return Cancel(msg.event_id)
        assert msg.start is not None
        assert msg.duration_s is not None
        return GridEvent(
            event_id=msg.event_id,
            start_s=unix_seconds(msg.start),
            duration_s=msg.duration_s,
            reduction_frac=msg.reduction_frac,
            limit_kw=msg.limit_kw,
            simple_level=msg.simple_level,
            ramp_s=msg.ramp_s,
            recovery_s=msg.recovery_s,
            modification=msg.modification,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        reason = "out_of_range" if first["type"] in _RANGE_ERRORS else "malformed"
        raise ProtocolError(f"grid event: {where}: {first['msg']}", reason=reason) from None
    except ValueError as exc:
        raise ProtocolError(f"grid event: {exc}") from None
