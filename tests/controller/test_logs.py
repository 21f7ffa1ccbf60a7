"""The daemon's logging: per-tick detail at DEBUG, one summary per period at INFO, and a first
connection that fails names the broker it tried."""

from __future__ import annotations

import asyncio

import structlog.testing

from controller.daemon import Controller
from controller.logs import TickSummary
from controller.policy_file import parse_policy
from tests.integration.harness import running, wait_until
from tests.services import free_port


def test_summary_once_per_period() -> None:
    summary = TickSummary()
    lines = []
    for k in range(181):  # three minutes of 1 s ticks
        out = summary.observe(
            float(k),
            period_s=60.0,
            site_power_w=1000.0 + k,
            site_allowed_w=5000.0 - k,
            stale_racks=k % 7,
            commands_total=2 * k,
        )
        if out is not None:
            lines.append(out)
    assert len(lines) == 3
    first = lines[0]
    assert first["ticks"] == 61  # ticks 0..60
    assert first["period_s"] == 60.0
    assert first["site_power_max_w"] == 1060.0
    assert first["site_power_mean_w"] == 1030.0
    assert first["site_allowed_min_w"] == 4940.0
    assert first["stale_racks_max"] == 6
    assert first["commands"] == 120
    assert lines[1]["ticks"] == 60
    assert lines[1]["commands"] == 120


async def test_ticks_log_at_debug_and_summarise_at_info() -> None:
    port = free_port()  # nothing listens: the daemon keeps deciding without a broker
    text = (
        "site: {name: logs, topology: {generate: {gpus: 32}}}\n"
        "control: {tick_period_s: 0.05, command_ttl_s: 3.0}\n"
        f"mqtt: {{port: {port}}}\nmetrics: {{port: 0}}\n"
        "logging: {summary_period_s: 0.3}\n"
    )
    controller = Controller(parse_policy(text, source="t"))
    with structlog.testing.capture_logs() as logs:
        async with running(controller):
            await wait_until(lambda: controller.runtime.ticks.ticks >= 12, timeout_s=10)
            await asyncio.sleep(0)
    ticks = [e for e in logs if e["event"] == "tick"]
    summaries = [e for e in logs if e["event"] == "ticks"]
    assert ticks
    assert {e["log_level"] for e in ticks} == {"debug"}
    assert 1 <= len(summaries) < len(ticks) / 3
    assert {e["log_level"] for e in summaries} == {"info"}
    assert summaries[0]["ticks"] >= 2
    refused = [e for e in logs if e["event"] == "cannot connect to the broker"]
    assert refused
    assert refused[0]["broker"] == f"127.0.0.1:{port}"
    assert refused[0]["log_level"] == "warning"
    assert not [e for e in logs if e["event"] == "broker connection lost"]
