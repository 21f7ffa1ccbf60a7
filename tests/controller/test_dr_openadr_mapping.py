"""OpenADR signals map onto DR targets by policy; unsupported or malformed events are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.config import DemandResponseSection
from controller.grid.openadr import event_from_openadr
from policies.errors import ProtocolError

START = datetime(2026, 7, 14, 22, 0, tzinfo=UTC)
SECTION = DemandResponseSection(store_path=Path("unused.sqlite"), simple_levels={1: 0.05, 2: 0.2})


def oadr(signals: list[dict[str, Any]], **period: Any) -> dict[str, Any]:
    return {
        "event_descriptor": {"event_id": "ev-9", "modification_number": 3},
        "active_period": {"dtstart": START, "duration": timedelta(hours=3), **period},
        "event_signals": signals,
    }


def signal(name: str, kind: str, *payloads: float) -> dict[str, Any]:
    return {
        "signal_name": name,
        "signal_type": kind,
        "intervals": [{"signal_payload": p} for p in payloads],
    }


@pytest.mark.parametrize(
    ("sig", "frac", "limit_w"),
    [
        (signal("SIMPLE", "level", 1, 2), 0.2, None),  # deepest interval, policy's level map
        (signal("LOAD_CONTROL", "x-loadControlCapacity", 0.75), 0.25, None),
        (signal("LOAD_CONTROL", "x-loadControlPercentOffset", 30), 0.3, None),
        (signal("LOAD_DISPATCH", "setpoint", 450.0), None, 450_000.0),
    ],
)
def test_signal_mapping(sig: dict[str, Any], frac: float | None, limit_w: float | None) -> None:
    event = event_from_openadr(oadr([sig]), now_s=START.timestamp() - 600, section=SECTION)
    if frac is None:
        assert event.reduction_frac is None
    else:
        assert event.reduction_frac == pytest.approx(frac)
    assert event.limit_w == limit_w
    assert event.event_id == "ev-9"
    assert event.modification == 3
    assert event.duration_s == 10_800
    assert event.source == "openadr"
    assert event.ramp_s == SECTION.default_ramp_s


def test_vtn_ramp_and_recovery_periods_override_defaults() -> None:
    event = event_from_openadr(
        oadr(
            [signal("SIMPLE", "level", 2)],
            ramp_up_period=timedelta(minutes=2),
            recovery_period=timedelta(minutes=15),
        ),
        now_s=0.0,
        section=SECTION,
    )
    assert event.ramp_s == 120.0
    assert event.recovery_s == 900.0


@pytest.mark.parametrize(
    "bad",
    [
        oadr([signal("ELECTRICITY_PRICE", "price", 0.3)]),
        oadr([signal("SIMPLE", "level", 3)]),  # level 3 is not in this policy's map
        oadr([]),
        {"event_descriptor": {"event_id": "x"}},
    ],
)
def test_unsupported_events_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        event_from_openadr(bad, now_s=0.0, section=SECTION)
