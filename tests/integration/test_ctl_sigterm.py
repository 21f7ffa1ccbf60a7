"""`rheostat run` as a process: SIGHUP with a bad file keeps the policy; SIGTERM leaves the status
`offline` and every rack reaches its safe caps once its command's TTL runs out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from controller import wire
from controller.policy_file import load_policy
from simulator.agents import RackAgents, run_rack_agents
from simulator.build import build_cluster
from simulator.scenario import Scenario
from tests.services import Mosquitto, free_port

pytestmark = pytest.mark.integration

SITE = "sigterm"
TTL_S = 1.5


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    for line in body.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


async def _retained_status(port: int) -> str:
    async with aiomqtt.Client("127.0.0.1", port, identifier="status-reader") as client:
        await client.subscribe(wire.status_topic(SITE), qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return wire.decode_status(bytes(message.payload)).state  # type: ignore[arg-type]
    raise AssertionError("no status")


async def test_sigterm_goes_offline_and_racks_fall_back_to_safe_caps(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    scenario = Scenario.model_validate(
        {
            "name": "sigterm",
            "duration_s": 600,
            "topology": {"gpus": 64, "a100_share": 0.0},
            "physics": {"actuation_lag_s": 0.1, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 64, "iteration_s": 4.0}],
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    metrics_port = free_port()
    policy = tmp_path / "policy.yaml"
    good = (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: 64, a100_share: 0}}}}}}\n"
        f"control: {{tick_period_s: 0.2, command_ttl_s: {TTL_S}, refresh_frac: 0.5}}\n"
        f"mqtt: {{port: {mosquitto.port}}}\n"
        f"metrics: {{port: {metrics_port}}}\n"
        "logging: {format: json}\n"
    )
    policy.write_text(good)
    # The commands carry the safe caps derived from the policy's topology: those, not the
    # agents' own (250 W), are what every rack falls back to.
    safe_w = load_policy(policy).safe_cap_w
    assert not np.allclose(safe_w, 250.0)
    with (tmp_path / "controller.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop has work
            [sys.executable, "-m", "controller", "run", "--config", str(policy)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "NOTIFY_SOCKET": ""},
        )
    agents = RackAgents(cluster=cluster, site=SITE, period_s=0.2, safe_cap_w=250.0)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_rack_agents(
            cluster, host="127.0.0.1", port=mosquitto.port, site=SITE, stop=stop, agents=agents
        )
    )
    try:
        async with asyncio.timeout(20):
            while not np.all(agents.counters.commands_applied >= 1):
                await asyncio.sleep(0.05)
        assert await _retained_status(mosquitto.port) == "online"
        # SIGHUP with a broken file: counted, and the daemon carries on with the old policy
        policy.write_text(good.replace("tick_period_s: 0.2", "tick_period_s: nope"))
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(5):
            while (
                await asyncio.to_thread(
                    _metric, metrics_port, 'rheostat_policy_reloads_total{result="failure"}'
                )
                < 1
            ):
                await asyncio.sleep(0.05)
        assert (
            await asyncio.to_thread(_metric, metrics_port, "rheostat_policy_last_reload_successful")
            == 0.0
        )
        applied = agents.counters.commands_applied.copy()
        await asyncio.sleep(TTL_S * 0.5 + 0.4)  # one refresh period and a tick
        assert np.all(agents.counters.commands_applied > applied)  # still commanding
        assert not agents.on_safe_cap.any()

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        stopped_at = time.monotonic()
        assert await _retained_status(mosquitto.port) == "offline"
        async with asyncio.timeout(TTL_S + 3):
            while not agents.on_safe_cap.all():
                await asyncio.sleep(0.05)
        # caps held until the TTL ran out, then each rack fell back on its own
        assert time.monotonic() - stopped_at > 0.2
        async with asyncio.timeout(3):  # the cluster applies caps after its actuation lag
            while not np.allclose(cluster.cap_w, safe_w, rtol=0.0, atol=0.1):
                await asyncio.sleep(0.05)
        assert agents.counters.offline_seen >= 1
        assert not cluster.trips
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        await asyncio.wait_for(task, 10)
