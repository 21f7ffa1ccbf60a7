"""The OpenADR 2.0b VEN, on openleadr: register, poll, take events, opt in or out, report power.

openleadr's `OpenADRClient` does the protocol (registration, polling on the VTN's requested
period, oadrCreatedEvent responses, report registration and TELEMETRY_USAGE delivery); this module
maps its event dicts onto `DrEvent`s and answers from the policy through `GridEvents`.

Signal mapping (first supported signal of an event; for several intervals the deepest wins,
since one event holds one target here):
- `SIMPLE` (type `level`): level 0-3 -> shed fraction from the policy's `simple_levels`;
- type `x-loadControlCapacity`: the payload is the fraction of baseline the site may draw;
- type `x-loadControlPercentOffset`: the payload is the percentage to shed;
- type `setpoint` / `x-loadControlSetpoint`: the payload is an absolute limit in kW.
The event's ramp-up and recovery periods, when the VTN sends them, override the policy's defaults.

An `ELECTRICITY_PRICE` event (type `price`, `priceRelative` or `priceMultiplier`) asks for no cut:
its intervals are a price forecast, handed to `price_sink` (the carbon- and price-aware planner of
flexible work) and answered optIn; without a sink it is opted out as unsupported.

Security: plain HTTP without signatures is what loopback tests use; a production VTN requires
TLS with client certificates (`cert_file`, `key_file`, `ca_file`) and signed messages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Self

from controller import extras
from controller.config import DemandResponseSection, OpenAdrSection
from controller.grid.manager import GridEvents, OptType
from controller.wire import MAX_EVENT_SECONDS, MAX_MODIFICATION, MAX_UNIX_S
from policies.dr.events import DrEvent, reduction_for_simple_level
from policies.errors import PolicyError, ProtocolError

log = logging.getLogger("rheostat.grid.openadr")

#: Resource id the site's power is reported under.
SITE_RESOURCE = "site"


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _target(
    signals: list[dict[str, Any]], section: DemandResponseSection
) -> tuple[float | None, float | None]:
    """(reduction_frac, limit_w) from an event's signals; ProtocolError when none is supported."""
    for signal in signals:
        name = str(signal.get("signal_name", "")).upper()
        kind = str(signal.get("signal_type", ""))
        payloads = [float(i["signal_payload"]) for i in signal.get("intervals", [])]
        if not payloads:
            continue
        if not all(math.isfinite(p) for p in payloads):
            raise ValueError("signal payloads must be finite")
        if name == "SIMPLE" and kind == "level":
            level = max(payloads)
            return reduction_for_simple_level(level, section.simple_levels), None
        if kind == "x-loadControlCapacity":
            return min(max(1.0 - min(payloads), 0.0), 0.99), None
        if kind == "x-loadControlPercentOffset":
            return min(max(max(payloads) / 100.0, 0.0), 0.99), None
        if kind in {"setpoint", "x-loadControlSetpoint"}:
            return None, min(payloads) * 1e3
    names = [f"{s.get('signal_name')}/{s.get('signal_type')}" for s in signals]
    raise ProtocolError(f"no supported signal in {names}")


#: Price signal types a forecast is read from (OpenADR 2.0b signal types of ELECTRICITY_PRICE).
PRICE_TYPES = frozenset({"price", "priceRelative", "priceMultiplier"})

PriceSink = Callable[[float, float, tuple[float, ...]], None]


def price_forecast(event: dict[str, Any]) -> tuple[float, float, tuple[float, ...]] | None:
    """(start Unix s, slot s, values) from an ELECTRICITY_PRICE event; None for other events.

    Intervals are taken in order from the event's start, each slot as long as the first interval
    (the VTN's usual hourly or 15-minute grid); ProtocolError when the intervals are unusable.
    """
    for signal in event.get("event_signals", []):
        name = str(signal.get("signal_name", "")).upper()
        if name != "ELECTRICITY_PRICE" or str(signal.get("signal_type", "")) not in PRICE_TYPES:
            continue
        try:
            intervals = list(signal.get("intervals", []))
            start: datetime = event["active_period"]["dtstart"]
            first = intervals[0]
            slot_s = _seconds(first.get("duration") or event["active_period"]["duration"])
            values = tuple(float(i["signal_payload"]) for i in intervals)
            begin = first.get("dtstart") or start
            return begin.timestamp(), slot_s, values
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"OpenADR price event not understood: {exc!r}") from exc
    return None


def event_from_openadr(
    event: dict[str, Any], *, now_s: float, section: DemandResponseSection
) -> DrEvent:
    """One openleadr event dict as a `DrEvent` (not yet opted in or out)."""
    try:
        descriptor = event["event_descriptor"]
        period = event["active_period"]
        start: datetime = period["dtstart"]
        ramp = period.get("ramp_up_period")
        reduction_frac, limit_w = _target(list(event.get("event_signals", [])), section)
        recovery = period.get("recovery_period")
        event_id = str(descriptor["event_id"])
        modification = descriptor.get("modification_number", 0)
        start_s = start.timestamp()
        duration_s = _seconds(period["duration"])
        ramp_s = section.default_ramp_s if ramp is None else _seconds(ramp)
        recovery_s = section.default_recovery_s if not recovery else max(_seconds(recovery), 1.0)
        # The same ranges as the MQTT event message: nothing past them reaches the store.
        if not 0 < len(event_id) <= 128:  # the event id bound everywhere
            raise ValueError("event_id must be 1-128 characters")
        if isinstance(modification, bool) or not isinstance(modification, int):
            raise TypeError("modification_number must be an integer")
        if not 0 <= modification <= MAX_MODIFICATION:
            raise ValueError("modification_number outside [0, 2**53 - 1]")
        if not 0 <= start_s <= MAX_UNIX_S:
            raise ValueError("dtstart out of range")
        for name, value in (("duration", duration_s), ("ramp", ramp_s), ("recovery", recovery_s)):
            if not 0 <= value <= MAX_EVENT_SECONDS:
                raise ValueError(f"{name} outside [0, {MAX_EVENT_SECONDS}] s")
        return DrEvent(
            event_id=event_id,
            source="openadr",
            notified_s=now_s,
            start_s=start_s,
            duration_s=duration_s,
            ramp_s=ramp_s,
            recovery_s=recovery_s,
            modification=modification,
            reduction_frac=reduction_frac,
            limit_w=limit_w,
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, PolicyError) as exc:
        raise ProtocolError(f"OpenADR event not understood: {exc!r}") from exc


class Ven:
    """The site's VEN. `async with Ven(...)` registers and starts polling; leaving stops it."""

    def __init__(
        self,
        *,
        section: OpenAdrSection,
        dr: DemandResponseSection,
        events: GridEvents,
        clock: Callable[[], float],
        price_sink: PriceSink | None = None,
    ) -> None:
        self.section = section
        self.price_sink = price_sink
        self.dr = dr
        self.events = events
        self.clock = clock
        self.responses: dict[str, OptType] = {}
        openleadr = extras.require("openleadr", "the OpenADR VEN (demand_response.openadr)")
        self.client = openleadr.OpenADRClient(
            ven_name=section.ven_name,
            vtn_url=section.vtn_url,
            ven_id=section.ven_id,
            cert=None if section.cert_file is None else str(section.cert_file),
            key=None if section.key_file is None else str(section.key_file),
            ca_file=None if section.ca_file is None else str(section.ca_file),
            vtn_fingerprint=section.vtn_fingerprint,
            show_fingerprint=False,
            disable_signature=section.cert_file is None,
        )
        self.client.add_handler("on_event", self._on_event)
        self.client.add_handler("on_update_event", self._on_event)
        interval = timedelta(seconds=section.report_interval_s)
        self.client.add_report(
            callback=self._site_power_w,
            resource_id=SITE_RESOURCE,
            measurement="real_power",
            unit="W",
            report_duration=timedelta(seconds=3600),
            sampling_rate=interval,
        )

    @property
    def registered(self) -> bool:
        return self.client.registration_id is not None

    async def __aenter__(self) -> Self:
        await self.client.run()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client.client_session is not None:
            await self.client.stop()

    def _site_power_w(self) -> float:
        """TELEMETRY_USAGE value: the latest measured site power (0 before any telemetry)."""
        power = self.events.last_power_w
        return 0.0 if power is None else power

    async def _on_event(self, event: dict[str, Any]) -> OptType:
        now_s = self.clock()
        event_id = str(event.get("event_descriptor", {}).get("event_id", "?"))
        status = event.get("event_descriptor", {}).get("event_status")
        if status == "cancelled":
            self.events.cancel(event_id, now_s)
            log.info("openadr event %s cancelled", event_id)
            return self.responses.get(event_id, "optIn")
        try:
            price = price_forecast(event)
            if price is not None and self.price_sink is not None:
                self.price_sink(*price)
                if len(self.responses) >= self.dr.max_events:
                    self.responses.clear()
                self.responses[event_id] = "optIn"
                log.info("openadr price forecast %s: %d slots", event_id, len(price[2]))
                return "optIn"
            dr_event = event_from_openadr(event, now_s=now_s, section=self.dr)
            opt, reason = self.events.apply(dr_event, now_s)
        except ProtocolError as exc:
            log.warning("openadr event %s opted out: %s", event_id[:128], exc)
            if len(self.responses) < self.dr.max_events or event_id in self.responses:
                self.responses[event_id] = "optOut"
            return "optOut"
        if len(self.responses) >= self.dr.max_events:  # bounded like the events themselves
            self.responses.clear()
        self.responses[event_id] = opt
        log.info("openadr event %s: %s %s", event_id, opt, reason)
        return opt
