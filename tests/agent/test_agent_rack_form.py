"""An agent holding a whole rack reports rack-level telemetry, by the same rules as a node's."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from agent.backend import BackendError
from agent.config import AgentConfig
from agent.node import NodeAgent
from controller import wire
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.gpu_backend import SimGpuBackend, SimRackMeter
from simulator.scenario import Scenario

SITE = "form"


def one_rack() -> SimCluster:
    scenario = Scenario.model_validate(
        {
            "name": "form",
            "duration_s": 60,
            "topology": {"gpus": 32, "a100_share": 0.0},
            "physics": {"actuation_lag_s": 0.0, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 32, "iteration_s": 4.0}],
        }
    )
    return build_cluster(scenario, site=SITE)


def rack_agent(cluster: SimCluster) -> NodeAgent:
    backend = SimGpuBackend(cluster, rack=0)
    config = AgentConfig(
        site=SITE, rack="r00000", node="r00000", backend="sim", telemetry="rack", safe_cap_w=250.0
    )
    return NodeAgent(
        config=config,
        backend=backend,
        node_power=SimRackMeter(cluster, 0),
        classes=backend.workload_classes,
        offload=False,
        wall_clock=lambda: 1.0e9,
    )


def test_rack_form_needs_the_whole_rack() -> None:
    with pytest.raises(ValidationError, match="whole rack"):
        AgentConfig(rack="r00000", node="n1", telemetry="rack", first_gpu=8, rack_gpus=16)
    cluster = one_rack()
    one_server = SimGpuBackend(cluster, server=0)  # 8 of the rack's 32 GPUs
    config = AgentConfig(rack="r00000", node="n1", backend="sim", telemetry="rack", rack_gpus=32)
    with pytest.raises(BackendError, match="whole rack"):
        NodeAgent(config=config, backend=one_server, offload=False)


def test_rack_telemetry_carries_the_agents_command_state() -> None:
    cluster = one_rack()
    agent = rack_agent(cluster)
    for _ in range(10):
        cluster.step()
    topic, payload = agent.encode_telemetry(*agent.reading_now())
    assert topic == wire.telemetry_topic(SITE, "r00000")
    msg = wire.decode_telemetry(payload, rack="r00000")
    assert (msg.seq, msg.boot, msg.cmd_seq, msg.fallback) == (1, agent.boot, None, False)
    assert msg.n_gpus == 32
    assert msg.ts_s == 1.0e9  # the agent's wall clock, injectable
    assert msg.rack_power_w == pytest.approx(float(cluster.reading().rack_power_w[0]))
    assert msg.rack_power_w > float(msg.power_w.sum())  # the meter sees hosts and fans too

    command = wire.Command(
        rack="r00000",
        epoch=2,
        ctl="c1",
        seq=7,
        issued_at_s=0.0,
        ttl_s=1.0,
        cap_w=np.full(32, 400.0),
        sm_clock_max_mhz=np.full(32, 1980.0),
    )
    rack_topic = wire.command_topic(SITE, "r00000")
    assert agent.handle_command_now(rack_topic, wire.encode_command(command))
    assert not agent.handle_command_now(rack_topic, wire.encode_command(command))  # a replay
    assert agent.check_watchdog_now(agent.clock() + 2.0)
    cluster.step()
    np.testing.assert_array_equal(cluster.cap_w[:32], 250.0)
    msg = wire.decode_telemetry(wire.encode_telemetry(agent.rack_telemetry(*agent.reading_now())))
    assert (msg.seq, msg.cmd_epoch, msg.cmd_seq) == (2, 2, 7)
    assert msg.cmd_rejected == {"stale_seq": 1}
    assert msg.fallback
