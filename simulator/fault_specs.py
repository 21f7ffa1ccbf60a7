"""The faults a scenario may inject: telemetry loss, outages, lost commands, late telemetry,
skewed clocks, failed feeds (`simulator.faults` plays them; `simulator.scenario` holds them).

Kept apart from the scenario model so the modules that play faults need not import it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FaultSpec(_Model):
    """A fault injected into the run: a rack's telemetry stops reaching the controller."""

    kind: Literal["telemetry_loss"]
    rack: int = Field(ge=0, description="rack index in topology order")
    at_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)


class _Window(_Model):
    """A fault that starts at `at_s` and lasts `duration_s` (none: to the end of the run)."""

    at_s: float = Field(0.0, ge=0)
    duration_s: float | None = Field(None, gt=0, description="none = to the end of the run")

    def active(self, now_s: float) -> bool:
        """True while the fault is in force at `now_s` (run seconds)."""
        end = float("inf") if self.duration_s is None else self.at_s + self.duration_s
        return self.at_s <= now_s < end


class ControllerOutage(_Window):
    """The controller process is down: no telemetry read, no command sent; it restarts after
    (a new instance id, its sequence from 1, its decision state lost)."""

    kind: Literal["controller_outage"]


class BrokerOutage(_Window):
    """The broker is down: every rack's telemetry and every command is lost."""

    kind: Literal["broker_outage"]


class CommandLoss(_Window):
    """Each command to a rack is lost with probability `fraction` (seeded)."""

    kind: Literal["command_loss"]
    fraction: float = Field(gt=0, le=1)
    rack: int | None = Field(None, ge=0, description="rack index; none = every rack")


class TelemetryDelay(_Window):
    """Telemetry arrives `delay_s` later than usual plus a uniform jitter in [0, `jitter_s`]
    (messages may overtake each other; the controller keeps the newest reading)."""

    kind: Literal["telemetry_delay"]
    delay_s: float = Field(0.0, ge=0, le=600)
    jitter_s: float = Field(0.0, ge=0, le=600)
    rack: int | None = Field(None, ge=0, description="rack index; none = every rack")


class ClockSkew(_Window):
    """A rack agent's clocks are off: its wall clock by `offset_s` (harmless: nothing orders by
    it) and its monotonic clock runs at `rate` times true time (a command's TTL, counted on it
    from receipt, lasts `ttl_s / rate` true seconds)."""

    kind: Literal["clock_skew"]
    offset_s: float = Field(0.0, ge=-86_400, le=86_400)
    rate: float = Field(1.0, ge=0.5, le=2.0)
    rack: int | None = Field(None, ge=0, description="rack index; none = every rack")


class FeedFailure(_Window):
    """A rack's or row's feed fails without warning: its rating drops to `rating_frac` of the
    group's full-power draw (every GPU at its max cap, servers' overhead, PSU losses) until the
    fault ends. The controller learns the new rating when it happens (from the facility's power
    monitoring), never before."""

    kind: Literal["feed_failure"]
    rating_frac: float = Field(gt=0, le=2)
    rack: int | None = Field(None, ge=0, description="rack index (give rack or row)")
    row: int | None = Field(None, ge=0, description="row index (give rack or row)")

    @model_validator(mode="after")
    def _one_group(self) -> FeedFailure:
        if (self.rack is None) == (self.row is None):
            raise ValueError("give exactly one of rack and row")
        return self


Fault = Annotated[
    FaultSpec
    | ControllerOutage
    | BrokerOutage
    | CommandLoss
    | TelemetryDelay
    | ClockSkew
    | FeedFailure,
    Field(discriminator="kind"),
]
