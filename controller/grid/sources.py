"""Turning what a source says into `DrEvent`s: the MQTT event message and policy-file events.

The MQTT message's format and validation are `controller.wire.grid_event`'s; here a validated
message meets the policy's defaults (ramp, recovery, SIMPLE levels) and becomes a `DrEvent`.
"""

from __future__ import annotations

from controller.config import DemandResponseSection, ScheduledEvent
from controller.wire import Cancel, decode_grid_event, unix_seconds
from policies.dr.events import DrEvent, reduction_for_simple_level
from policies.errors import PolicyError, ProtocolError


def parse_event_message(
    payload: bytes, *, now_s: float, section: DemandResponseSection
) -> DrEvent | Cancel:
    """Validate one MQTT event message; raises `ProtocolError` with the reason on bad input."""
    msg = decode_grid_event(payload)
    if isinstance(msg, Cancel):
        return msg
    try:
        reduction = msg.reduction_frac
        if msg.simple_level is not None:
            reduction = reduction_for_simple_level(msg.simple_level, section.simple_levels)
        return DrEvent(
            event_id=msg.event_id,
            source="mqtt",
            notified_s=now_s,
            start_s=msg.start_s,
            duration_s=msg.duration_s,
            ramp_s=section.default_ramp_s if msg.ramp_s is None else msg.ramp_s,
            recovery_s=section.default_recovery_s if msg.recovery_s is None else msg.recovery_s,
            reduction_frac=reduction,
            limit_w=None if msg.limit_kw is None else msg.limit_kw * 1e3,
            modification=msg.modification,
        )
    except (ValueError, PolicyError) as exc:
        raise ProtocolError(f"grid event: {exc}") from None


def scheduled_event(spec: ScheduledEvent, section: DemandResponseSection) -> DrEvent:
    """A policy-file event. Known since the file was written, so its ramp may start early."""
    start_s = unix_seconds(spec.start)
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
