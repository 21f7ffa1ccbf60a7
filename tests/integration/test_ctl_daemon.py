"""The daemon against a real Mosquitto: closed loop with simulator agents, MQTT 5 and 3.1.1,
broker restart, bad telemetry through the broker, reloads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import numpy as np
import orjson
import pytest

from controller import wire
from controller.daemon import Controller
from controller.policy_file import parse_policy
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.scenario import Scenario
from tests.integration.harness import agents_running, policy_for, running, wait_until
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SITE = "itest"


def small_cluster() -> SimCluster:
    scenario = Scenario.model_validate(
        {
            "name": "ctl",
            "duration_s": 600,
            "seed": 5,
            "topology": {"gpus": 96, "a100_share": 0.0, "site_limit_frac": 0.7},
            "physics": {"actuation_lag_s": 0.2, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 96, "iteration_s": 4.0}],
        }
    )
    return build_cluster(scenario, site=SITE)


def policy_yaml(port: int, protocol: str = "5", *, ttl_s: float = 3.0, gpus: int = 96) -> str:
    return (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: {gpus}, a100_share: 0}}}}}}\n"
        f"control: {{tick_period_s: 0.2, command_ttl_s: {ttl_s}, stale_after_s: 2}}\n"
        f'mqtt: {{port: {port}, protocol: "{protocol}", client_id: ctl-{protocol}}}\n'
        "metrics: {port: 0}\n"
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_closed_loop_with_agents(mosquitto: Mosquitto, protocol: str) -> None:
    cluster = small_cluster()
    controller = Controller(policy_for(cluster, policy_yaml(mosquitto.port, protocol)))
    rt = controller.runtime
    async with agents_running(cluster, mosquitto.port, site=SITE, protocol=protocol) as agents:
        async with running(controller):
            await wait_until(lambda: bool(np.all(agents.counters.commands_applied >= 2)))
            await wait_until(
                lambda: (
                    rt.decision is not None
                    and not rt.fleet.stale_racks(time.monotonic(), 2.0).any()
                )
            )
            # what the agents obey is what the controller decided, within the wire's 0.1 W rounding
            await wait_until(
                lambda: (
                    bool(np.allclose(cluster.cap_w, rt.book.sent_cap_w, atol=0.06))
                    and bool(np.all(rt.book.sent_cap_w < cluster.topology.gpu_max_cap_w))
                )
            )
            assert rt.ingest.counters.accepted > 0
            assert sum(rt.ingest.counters.rejected.values()) == 0
            assert rt.mqtt_connected
        # the controller says goodbye on stop; the agents keep their caps
        await wait_until(lambda: agents.counters.offline_seen >= 1, 5.0)
        assert agents.counters.fallbacks.sum() == 0
    assert not cluster.trips
    assert agents.counters.commands_rejected.sum() == 0


def _telemetry(rack: str, seq: int, ts_s: float, n: int = 32) -> dict[str, object]:
    return {
        "v": 1, "rack": rack, "seq": seq, "ts": ts_s,
        "power_w": [400.0] * n, "sm_clock_mhz": [1800.0] * n, "util": [0.9] * n,
        "mem_util": [0.2] * n, "temp_c": [55.0] * n, "cap_w": [700.0] * n,
        "classes": ["training"], "class_idx": [0] * n, "rack_power_w": 15000.0,
    }  # fmt: skip


async def test_bad_telemetry_through_the_broker_is_counted_and_dropped(
    mosquitto: Mosquitto,
) -> None:
    policy = parse_policy(policy_yaml(mosquitto.port), source="t")
    controller = Controller(policy)
    rt = controller.runtime
    topic = wire.telemetry_topic(SITE, "r00001")
    now = time.time()
    cases = [
        (topic, b"\x00garbage\xff"),
        (topic, b"{" * (10 * 1024 * 1024)),
        (topic, orjson.dumps(_telemetry("r00001", 2, now) | {"power_w": [float("nan")] * 32})),
        (topic, orjson.dumps(_telemetry("r00001", 3, now, n=31))),
        (wire.telemetry_topic(SITE, "r99999"), orjson.dumps(_telemetry("r99999", 1, now))),
        (topic, orjson.dumps(_telemetry("r00001", 5, now))),  # accepted
        (topic, orjson.dumps(_telemetry("r00001", 5, now))),  # replayed
    ]
    async with running(controller), aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        await wait_until(lambda: rt.subscribed)
        for t, payload in cases:
            await pub.publish(t, payload, qos=1)
            await asyncio.sleep(0.15)  # one at a time, so conflation keeps every case
        await wait_until(lambda: rt.ingest.counters.messages == len(cases))
        rejected = rt.ingest.counters.rejected
        assert rejected["malformed"] == 1
        assert rejected["too_large"] == 1
        assert rejected["non_finite"] == 1
        assert rejected["wrong_length"] == 1
        assert rejected["unknown_rack"] == 1
        assert rejected["stale_sequence"] == 1
        assert rt.ingest.counters.accepted == 1
        assert rt.fleet.rack_power_w[1] == 15000.0
        await asyncio.sleep(0.3)
        assert rt.ticks.ticks > 2  # the loop kept going


async def test_broker_restart_reconnects_and_resends_commands(mosquitto: Mosquitto) -> None:
    cluster = small_cluster()
    # refreshes are 9 s apart: any command soon after the restart is the reconnect's resend
    text = policy_yaml(mosquitto.port, ttl_s=10.0).replace("}\nmqtt", ", refresh_frac: 0.9}\nmqtt")
    controller = Controller(policy_for(cluster, text))
    rt = controller.runtime
    async with agents_running(cluster, mosquitto.port, site=SITE) as agents, running(controller):
        await wait_until(lambda: bool(np.all(agents.counters.commands_applied >= 1)))
        before = agents.counters.commands_applied.copy()
        await asyncio.to_thread(mosquitto.restart, 0.5)
        await wait_until(lambda: rt.mqtt_reconnects == 1 and rt.mqtt_connected, 15.0)
        # every rack hears its command again once it is back, long before its TTL would run out
        await wait_until(lambda: bool(np.all(agents.counters.commands_applied > before)), 8.0)
        assert np.all(agents.counters.connects >= 2)
        assert agents.counters.fallbacks.sum() == 0
        assert rt.ticks.ticks > 3  # deciding went on through the outage
    assert not cluster.trips


async def test_bad_policy_reload_keeps_the_running_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml(1883))
    controller = Controller(parse_policy(path.read_text(), source=str(path)), policy_path=path)
    rt = controller.runtime
    path.write_text(policy_yaml(1883).replace("tick_period_s: 0.2", "tick_period_s: -3"))
    assert not await controller.reload()
    assert rt.policy.config.control.tick_period_s == 0.2
    assert (rt.reloads.failures, rt.reloads.successes, rt.reloads.last_successful) == (1, 0, False)
    path.write_text(policy_yaml(1883).replace("tick_period_s: 0.2", "tick_period_s: 0.5"))
    assert await controller.reload()
    assert rt.policy.config.control.tick_period_s == 0.5
    assert rt.reloads.last_successful
    # a different fleet size is accepted and starts from empty state
    path.write_text(policy_yaml(1883, gpus=64))
    assert await controller.reload()
    assert rt.fleet.power_w.size == 64
    assert rt.book.sent_cap_w.size == 64


async def test_watched_policy_file_reloads_on_change(mosquitto: Mosquitto, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    text = policy_yaml(mosquitto.port).replace(
        "stale_after_s: 2}", "stale_after_s: 2, watch_policy_s: 0.1}"
    )
    path.write_text(text)
    controller = Controller(parse_policy(text, source=str(path)), policy_path=path)
    rt = controller.runtime
    async with running(controller):
        await asyncio.sleep(0.3)  # the watcher takes the file's first signature
        path.write_text(text.replace("tick_period_s: 0.2", "tick_period_s: 0.3"))
        await wait_until(lambda: rt.policy.config.control.tick_period_s == 0.3, 5.0)
        path.write_text(text.replace("tick_period_s: 0.2", "tick_period_s: [broken"))
        await wait_until(lambda: rt.reloads.failures == 1, 5.0)
        assert rt.policy.config.control.tick_period_s == 0.3  # the running policy stays
        assert rt.reloads.successes == 1


async def _retained_status(port: int) -> str:
    async with aiomqtt.Client("127.0.0.1", port, identifier="status-reader") as reader:
        await reader.subscribe(wire.status_topic(SITE), qos=1)
        async with asyncio.timeout(5):
            async for message in reader.messages:
                return wire.decode_status(bytes(message.payload)).state  # type: ignore[arg-type]
    raise AssertionError("no retained status")


async def test_controller_as_async_context_starts_and_says_offline_on_exit(
    mosquitto: Mosquitto,
) -> None:
    controller = Controller(parse_policy(policy_yaml(mosquitto.port), source="t"))
    async with controller as running_controller:
        assert running_controller is controller
        with pytest.raises(RuntimeError, match="already running"):
            await controller.__aenter__()
        await wait_until(lambda: controller.runtime.subscribed)
        assert await _retained_status(mosquitto.port) == "online"
        await wait_until(lambda: controller.runtime.ticks.ticks > 2)
    assert not controller.runtime.mqtt_connected
    assert await _retained_status(mosquitto.port) == "offline"
    # Stopped cleanly, it may be entered again: a new session, online once more.
    async with controller:
        await wait_until(lambda: controller.runtime.subscribed)
        assert await _retained_status(mosquitto.port) == "online"
    assert await _retained_status(mosquitto.port) == "offline"
