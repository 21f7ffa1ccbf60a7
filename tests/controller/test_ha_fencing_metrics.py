"""Agents' command rejections travel in telemetry, land per rack, and are exported by reason."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller import wire
from controller.config import HaSection
from controller.ha.runner import HaRunner
from controller.ingest import ClassTable, Ingest
from controller.metrics.ha import HaCollector
from policies.errors import TelemetryError
from policies.fleet import FleetState
from policies.topology import generate_topology

TOPO = generate_topology(64, site="s", servers_per_rack=1)  # 8 racks of 8 GPUs


def _telemetry(rack: str, seq: int, **extra: object) -> bytes:
    n = 8
    msg = wire.Telemetry(
        rack=rack,
        seq=seq,
        ts_s=1.0e9 + seq,
        power_w=np.full(n, 300.0),
        sm_clock_mhz=np.full(n, 1500.0),
        util=np.full(n, 0.5),
        mem_util=np.full(n, 0.2),
        temp_c=np.full(n, 55.0),
        cap_w=np.full(n, 700.0),
        classes=("training",),
        class_idx=np.zeros(n, np.int64),
        rack_power_w=3000.0,
    )
    return orjson.dumps(orjson.loads(wire.encode_telemetry(msg)) | extra)


def test_rejections_round_trip_and_land_per_rack() -> None:
    ingest = Ingest(TOPO, FleetState.empty(TOPO), ClassTable(), restart_gap_s=1.0)
    rack = TOPO.racks.ids[2]
    topic = wire.telemetry_topic("s", rack)
    assert ingest.handle(
        topic, _telemetry(rack, 1, cmd_rejected={"stale_epoch": 4, "stale_seq": 1})
    )
    row = ingest.cmd_rejected[2].tolist()
    assert row[wire.COMMAND_REJECT_REASONS.index("stale_epoch")] == 4
    assert sum(row) == 5
    assert ingest.handle(topic, _telemetry(rack, 2))  # absent: the agent rebooted, none since
    assert ingest.cmd_rejected[2].sum() == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"stale_epoch": True}, "malformed"),  # not an integer at all
        ({"stale_epoch": -1}, "out_of_range"),
        ({"stale_epoch": 2**53}, "out_of_range"),
        ({"stale_epoch": 1.5}, "malformed"),
        ({"bogus": 1}, "malformed"),
        ([1, 2], "malformed"),
    ],
)
def test_hostile_rejection_counts_are_refused(value: object, reason: str) -> None:
    with pytest.raises(TelemetryError) as info:
        wire.decode_telemetry(_telemetry("r", 1, cmd_rejected=value), rack="r")
    assert info.value.reason == reason


def test_collector_exports_leadership_and_rejections_by_reason() -> None:
    rejected = np.zeros((TOPO.n_racks, len(wire.COMMAND_REJECT_REASONS)), np.int64)
    rejected[0, 0] = 3
    rejected[5, 0] = 2
    runner = HaRunner(HaSection(), site="s", name="ctl")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HaCollector(runner, lambda: rejected))
    text = generate_latest(registry).decode()
    assert 'rheostat_agent_command_rejections_reported{reason="stale_epoch",site="s"} 5.0' in text
    assert (
        f'rheostat_ha_leader{{backend="none",controller="{runner.instance}",site="s"}} 1.0' in text
    )
    assert 'rheostat_ha_epoch{backend="none"' in text
