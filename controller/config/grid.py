"""The policy file's `demand_response` section: event sources, event defaults, Flex policy.

Units are in every name; times in scheduled events are ISO 8601 with a zone, or Unix seconds.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, model_validator

from controller.config.base import Fraction, Seconds, Section


class ScheduledEvent(Section):
    """An event written into the policy file (a tariff peak window, a contracted curtailment)."""

    id: Annotated[str, Field(min_length=1, max_length=128)]
    """Event id, unique within the file."""
    start: datetime | float
    """Start: an ISO 8601 time, or Unix seconds."""
    duration_s: Annotated[float, Field(gt=0)]
    """Length of the event. Units: s."""
    reduction_frac: Fraction | None = None
    """Share of the baseline to shed; give this or limit_kw."""
    limit_kw: Annotated[float, Field(gt=0)] | None = None
    """Absolute site limit during the event; give this or reduction_frac. Units: kW."""
    ramp_s: Seconds | None = None
    """Time to reach the target from the start; unset: default_ramp_s. Units: s."""
    recovery_s: Annotated[float, Field(gt=0)] | None = None
    """Time to return to normal after the end; unset: default_recovery_s. Units: s."""

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.reduction_frac is None) == (self.limit_kw is None):
            raise ValueError("give exactly one of reduction_frac and limit_kw")
        return self


class OpenAdrSection(Section):
    """The OpenADR 2.0b VEN. Plain HTTP is for loopback tests; production VTNs need TLS.

    `cert_file`/`key_file`/`ca_file` enable TLS and XML signatures as openleadr implements them;
    `vtn_fingerprint` pins the VTN's signing certificate.
    """

    vtn_url: Annotated[str, Field(pattern=r"^https?://")]
    """The VTN's base URL (http:// only on loopback; production needs https://)."""
    ven_name: Annotated[str, Field(min_length=1)]
    """This VEN's name, as registered with the VTN."""
    ven_id: str | None = None
    """This VEN's id, if the VTN assigned one already."""
    cert_file: Path | None = None
    """Client certificate (PEM): TLS and XML signatures."""
    key_file: Path | None = None
    """Private key of the client certificate (PEM)."""
    ca_file: Path | None = None
    """CA certificate(s) the VTN is checked against (PEM)."""
    vtn_fingerprint: str | None = None
    """Pins the VTN's signing certificate."""
    report_interval_s: Annotated[float, Field(gt=0)] = 10.0
    """How often site power is reported to the VTN. Units: s."""

    @model_validator(mode="after")
    def _cert_pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        return self


class DemandResponseSection(Section):
    """How Rheostat answers the grid.

    `store_path` is the SQLite file events persist in (relative paths resolve against the policy
    file's directory). `baseline_window_s` is the pre-event averaging window. `simple_levels`
    maps OpenADR SIMPLE levels to shed fractions. `flex_tolerances` is the slowdown each Flex tier
    tolerates; with `grid_first` the target is met even past them. Events asking to shed more
    than `max_reduction_frac` are opted out of (unless `grid_first`).
    """

    enabled: bool = True
    """Act on demand-response events."""
    store_path: Path = Path("rheostat-events.sqlite")
    """SQLite file events persist in; relative paths resolve against the policy file's directory."""
    baseline_window_s: Annotated[float, Field(gt=0)] = 900.0
    """Averaging window of the pre-event baseline. Units: s."""
    default_ramp_s: Seconds = 30.0
    """Ramp to an event's target when the event gives none. Units: s."""
    default_recovery_s: Annotated[float, Field(gt=0)] = 300.0
    """Recovery after an event when the event gives none. Units: s."""
    simple_levels: dict[int, Fraction] = Field(
        default_factory=lambda: {0: 0.0, 1: 0.10, 2: 0.25, 3: 0.50}
    )
    """OpenADR SIMPLE level (0 to 3) to the share of baseline shed."""
    flex_tolerances: tuple[Fraction, Fraction, Fraction, Fraction] = (0.0, 0.10, 0.25, 0.50)
    """Slowdown each flex tier (0 to 3) tolerates during an event."""
    grid_first: bool = False
    """Meet the target even past the tiers' tolerances."""
    max_reduction_frac: Annotated[float, Field(gt=0, le=1)] = 0.6
    """Events asking to shed more than this share are opted out of (unless grid_first)."""
    mqtt_events: bool = True
    """Take events from the grid-event MQTT topic."""
    max_events: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    """Most events held at once (live and past, per event id); an event with a new id past it is
    refused and counted, after the events that are over have been forgotten.
    """
    openadr: OpenAdrSection | None = None
    """The OpenADR 2.0b VEN; unset: none (needs the openadr extra)."""
    events: list[ScheduledEvent] = Field(default_factory=list)
    """Events written into the file (tariff peak windows, contracted curtailments)."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if any(b < a for a, b in zip(self.flex_tolerances, self.flex_tolerances[1:], strict=False)):
            raise ValueError("flex_tolerances must not fall from Flex 0 to Flex 3")
        ids = [e.id for e in self.events]
        if len(set(ids)) != len(ids):
            raise ValueError("scheduled event ids must be unique")
        return self
