"""The topic table documents every topic the protocol's builders make, and nothing else."""

from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub

from controller import wire

SITE = "lab"
ROOT = f"{wire.TOPIC_ROOT}/{SITE}/"

BUILT = {
    "telemetry": wire.telemetry_topic(SITE, "r00001"),
    "node_telemetry": wire.node_telemetry_topic(SITE, "r00001", "n3"),
    "command": wire.command_topic(SITE, "r00001"),
    "node_command": wire.node_command_topic(SITE, "r00001", "n3"),
    "status": wire.status_topic(SITE),
    "facility": wire.facility_topic(SITE),
    "signal": wire.signal_topic(SITE),
    "job": wire.job_topic(SITE, "pretrain-7"),
    "grid_event": wire.grid_event_topic(SITE),
    "grid_event_by_id": f"{wire.grid_event_topic(SITE)}/peak-1",
    "grid_response": wire.grid_response_topic(SITE, "peak-1"),
}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_each_built_topic_matches_exactly_its_own_row(name: str) -> None:
    matches = [t.name for t in wire.TOPICS if topic_matches_sub(ROOT + t.filter, BUILT[name])]
    assert matches == [name]


def test_the_table_has_one_row_per_topic_and_a_codec_module_for_each() -> None:
    names = [t.name for t in wire.TOPICS]
    assert sorted(names) == sorted(BUILT)
    modules = {t.message for t in wire.TOPICS}
    for module in modules:
        __import__(f"controller.wire.{module}")


def test_filters_the_subscribers_use_are_rows_of_the_table() -> None:
    filters = {ROOT + t.filter for t in wire.TOPICS}
    used = {
        wire.telemetry_filter(SITE),
        wire.node_telemetry_filter(SITE),
        wire.command_filter(SITE),
        wire.jobs_filter(SITE),
        *wire.grid_event_filters(SITE),
    }
    assert used <= filters
    assert wire.rack_from_topic(BUILT["telemetry"]) == "r00001"
    assert BUILT["job"].startswith(wire.jobs_prefix(SITE))


def test_only_periodic_readings_are_qos_0_and_state_is_retained() -> None:
    by_name = {t.name: t for t in wire.TOPICS}
    assert {n for n, t in by_name.items() if t.qos == 0} == {
        "telemetry",
        "node_telemetry",
        "facility",
    }
    assert {n for n, t in by_name.items() if t.retained} == {"status", "job", "grid_response"}
