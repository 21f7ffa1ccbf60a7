"""`rheostat demo`: embedded amqtt broker (MQTT 3.1.1) and a real Mosquitto (MQTT 5)."""

from __future__ import annotations

import re

import orjson
import pytest

from controller.cli import main
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SUMMARY_KEYS = {
    "scenario", "controller", "duration_s", "gpus", "breaker_trips", "tripped_racks",
    "seconds_over_limit", "max_overshoot_pct", "time_to_cap_s", "throughput_retained",
    "energy_kwh", "energy_cost_usd", "carbon_kg", "peak_site_power_kw", "max_ramp_kw_per_s",
    "ramp_violation_s", "realtime_factor", "dr", "telemetry_messages", "commands_sent",
    "sync_jobs",
}  # fmt: skip


def _demo(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, object]:
    code = main(
        ["demo", "--racks", "2", "--duration", "5", "--metrics-port", "0", "--json", *extra]
    )
    summary = orjson.loads(capsys.readouterr().out)
    assert code == 0
    return summary  # type: ignore[no-any-return]


def test_demo_with_the_embedded_broker(capsys: pytest.CaptureFixture[str]) -> None:
    summary = _demo(capsys)
    assert set(summary) == SUMMARY_KEYS
    assert summary["gpus"] == 64
    assert summary["breaker_trips"] == 0
    assert summary["telemetry_messages"] >= 4  # type: ignore[operator]
    assert summary["commands_sent"] >= 2  # type: ignore[operator]
    # The demo's scheduler reported its two training jobs; every report resolved.
    assert summary["sync_jobs"] == 2


def test_demo_against_mosquitto(mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    summary = _demo(capsys, "--broker", mosquitto.url)
    assert summary["breaker_trips"] == 0
    assert summary["commands_sent"] >= 2  # type: ignore[operator]


def test_demo_status_shows_what_binds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--racks", "2", "--duration", "11", "--metrics-port", "0"]) == 0
    captured = capsys.readouterr()
    status = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert len(status) == 2  # one line per 10 s through a pipe
    assert "waiting for the racks to report (0/2)" in status[0]
    assert " kW" not in status[0]  # no power shown before any rack has reported
    later = status[1]
    for part in ("racks reporting 2/2", "site ", "hottest rack ", "of its usable rating"):
        assert part in later
    assert re.search(r"racks at their limit \d/2  GPUs capped \d+/64", later)
    rows = dict(line.split(None, 1) for line in captured.out.splitlines())
    assert rows["breaker_trips"] == "0"
    assert rows["tripped_racks"] == "none"
    assert rows["seconds_over_limit.rack"] == "0"
    assert "throughput_retained" not in rows  # the live demo has no reference run
    assert not any(c in captured.out for c in "{}[]'")
    assert "None" not in captured.out
