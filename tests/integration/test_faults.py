"""Faults against a real Mosquitto, `rheostat run` as a process and simulated rack agents.

Each case is one an operator or an attacker can cause: hostile integers (retained too, so every
restart meets them again), a controller killed with SIGKILL, a broker restart, a step of the
controller's wall clock, a fault inside the daemon, and a rack's credentials presented with the
controller's client id. The figures each case measures are printed (run with `-s`) and bounded by
its assertions; docs/reliability.md quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import orjson
import pytest

from controller import wire
from controller.daemon import Controller
from policies.pipeline import decide
from simulator.agents import RackAgents, run_rack_agents
from simulator.build import build_cluster
from simulator.cluster import SimCluster
from simulator.scenario import Scenario
from tests.deploy.test_deploy_mosquitto_acl import CONTROLLER, SecuredBroker
from tests.deploy.test_deploy_mosquitto_acl import secured as secured  # noqa: PLC0414 - fixture
from tests.deploy.test_deploy_mosquitto_acl import tls_files as tls_files  # noqa: PLC0414
from tests.integration.harness import fleet_policy, running
from tests.services import Mosquitto, free_port

pytestmark = pytest.mark.integration

SITE = "faults"
N_GPUS = 128  # four racks of 32
TTL_S = 2.0
SAFE_CAP_W = 250.0


def cluster_for_test() -> SimCluster:
    scenario = Scenario.model_validate(
        {
            "name": SITE,
            "duration_s": 600,
            "topology": {"gpus": N_GPUS, "a100_share": 0.0},
            "physics": {"actuation_lag_s": 0.05, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": N_GPUS, "iteration_s": 4.0}],
        }
    )
    return build_cluster(scenario, site=SITE)


def report(name: str, value: float, unit: str) -> None:
    print(f"FAULT-FIGURE {name}: {value:.2f} {unit}")  # the figures docs/reliability.md quotes


class Daemon:
    """`rheostat run` in a child process with its own policy file and metrics port."""

    def __init__(
        self, workdir: Path, broker_port: int, *, mqtt_extra: str = "", n_gpus: int = N_GPUS
    ) -> None:
        self.workdir = workdir
        self.metrics_port = free_port()
        self.policy = workdir / "policy.yaml"
        self.policy.write_text(
            f"site: {{name: {SITE}, topology: {{generate: {{gpus: {n_gpus}, a100_share: 0}}}}}}\n"
            f"control: {{tick_period_s: 0.2, command_ttl_s: {TTL_S}, refresh_frac: 0.5,"
            " stale_after_s: 1.0}\n"
            f"mqtt: {{port: {broker_port}{mqtt_extra}}}\n"
            f"metrics: {{port: {self.metrics_port}}}\n"
            "logging: {format: json, level: warning}\n"
            f"demand_response: {{store_path: {workdir / 'events.sqlite'}}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        with (self.workdir / "controller.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "run", "--config", str(self.policy)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "NOTIFY_SOCKET": ""},
            )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        body = urllib.request.urlopen(url, timeout=2).read().decode()
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    async def metric(self, name: str) -> float:
        for _ in range(100):
            with contextlib.suppress(OSError):
                return (await asyncio.to_thread(self.metrics)).get(name, 0.0)
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no metrics from the daemon: {self.log()}")

    def log(self) -> str:
        return (self.workdir / "controller.log").read_text()[-3000:]

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(10)
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@contextlib.asynccontextmanager
async def agents_up(cluster: SimCluster, port: int) -> AsyncIterator[RackAgents]:
    agents = RackAgents(cluster=cluster, site=SITE, period_s=0.2, safe_cap_w=SAFE_CAP_W)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_rack_agents(cluster, host="127.0.0.1", port=port, site=SITE, stop=stop, agents=agents)
    )
    try:
        yield agents
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> float:
    """Wait for `predicate`; returns when it first held (monotonic s)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)
    return time.monotonic()


async def all_fresh_after(agents: RackAgents, timeout_s: float = 15.0) -> float:
    """Wait until every rack has applied a command it received from now on; when (monotonic)."""
    applied = agents.counters.commands_applied.copy()
    return await wait_until(
        lambda: bool(np.all(agents.counters.commands_applied > applied)), timeout_s
    )


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto) -> Any:
    proc = Daemon(tmp_path, mosquitto.port)
    yield proc
    proc.stop()


async def test_hostile_integers_keep_the_daemon_running_retained_too(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # The daemon's fleet has a fifth rack that no agent speaks for: the retained hostile message
    # on its topic is never replaced by genuine telemetry, so every start must handle it.
    daemon = Daemon(tmp_path, mosquitto.port, n_gpus=N_GPUS + 32)
    try:
        await hostile_integers(mosquitto, daemon)
    finally:
        daemon.stop()


async def hostile_integers(mosquitto: Mosquitto, daemon: Daemon) -> None:
    retained_topic = wire.telemetry_topic(SITE, "r00004")
    telemetry = {
        "v": 1,
        "rack": "r00004",
        "seq": 2**63,
        "ts": time.time(),
        **{k: [1.0] * 32 for k in ("power_w", "sm_clock_mhz", "temp_c", "cap_w")},
        **{k: [0.5] * 32 for k in ("util", "mem_util")},
        "classes": ["x"],
        "class_idx": [0] * 32,
        "rack_power_w": 10.0,
    }
    event = {
        "v": 1,
        "action": "create",
        "event_id": "evil",
        "start": time.time() + 60,
        "duration_s": 60,
        "reduction_frac": 0.1,
        "modification": 2**70,
    }
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="attacker") as attacker:
        # Retained: every (re)started daemon receives it on subscribing.
        await attacker.publish(retained_topic, orjson.dumps(telemetry), qos=1, retain=True)
        daemon.start()
        async with agents_up(cluster_for_test(), mosquitto.port) as agents:
            await all_fresh_after(agents, 20.0)
            await attacker.publish(
                f"rheostat/v1/{SITE}/grid/event/evil", json.dumps(event).encode(), qos=1
            )
            job = {"v": 1, "ts": 1.0, "tier": 1, "sync": True}
            job["gpus"] = [{"rack": "r00000", "first": 2**70, "count": 2**64}]
            await attacker.publish(f"rheostat/v1/{SITE}/jobs/evil", json.dumps(job).encode())
            await attacker.publish(wire.telemetry_topic(SITE, "r00001"), b"\xff" * 100)
            rejected = 'rheostat_telemetry_rejected_total{reason="out_of_range"}'
            await metric_at_least(daemon, rejected, 1)
            await all_fresh_after(agents)  # still commanding every rack
            assert daemon.alive(), daemon.log()
            await metric_at_least(
                daemon, f'rheostat_job_reports_rejected_total{{site="{SITE}"}}', 1
            )
            refused = "rheostat_messages_rejected_total"
            labels = f'{{kind="grid_event",reason="out_of_range",site="{SITE}"}}'
            await metric_at_least(daemon, refused + labels, 1)
            scraped = await asyncio.to_thread(daemon.metrics)
            faults = [
                v
                for k, v in scraped.items()
                if k.startswith("rheostat_messages_rejected_total") and "internal_error" in k
            ]
            assert sum(faults) == 0  # all refused as typed rejections, none as a fault
            # A restart meets the retained message again and runs on.
            assert await asyncio.to_thread(daemon.signal, signal.SIGTERM) == 0
            daemon.start()
            await all_fresh_after(agents, 20.0)
            await metric_at_least(daemon, rejected, 1)  # it met the retained message again
            assert daemon.alive(), daemon.log()
        await attacker.publish(retained_topic, b"", qos=1, retain=True)


async def test_sequence_poisoning_locks_a_rack_out_for_at_most_one_stale_period(
    mosquitto: Mosquitto, daemon: Daemon
) -> None:
    daemon.start()
    async with (
        agents_up(cluster_for_test(), mosquitto.port) as agents,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="attacker") as attacker,
    ):
        await all_fresh_after(agents, 20.0)
        genuine = wire.decode_telemetry(wire.encode_telemetry(agents.telemetry(0)))
        far = dataclasses.replace(genuine, seq=genuine.seq + 10**6, ts_s=time.time() + 365 * 86400)
        # The ingest queue keeps the newest pending message per rack topic, so the genuine
        # agent's next report may replace a forged one before it is read: send until one is read.
        skew = 'rheostat_telemetry_rejected_total{reason="clock_skew"}'
        async with asyncio.timeout(10):
            while await daemon.metric(skew) < 1:
                await attacker.publish(
                    wire.telemetry_topic(SITE, "r00000"), wire.encode_telemetry(far)
                )
                await asyncio.sleep(0.2)
        # Inside the skew window the forged sequence is taken; the genuine agent is then refused
        # until the rack has been quiet for one stale period (1 s here), and re-based.
        near = dataclasses.replace(genuine, seq=genuine.seq + 10**6, ts_s=time.time())
        await attacker.publish(wire.telemetry_topic(SITE, "r00000"), wire.encode_telemetry(near))
        forged_at = time.monotonic()
        await metric_at_least(daemon, f'rheostat_telemetry_rebased_total{{site="{SITE}"}}', 1)
        report("sequence poisoning: rack re-based after", time.monotonic() - forged_at, "s")
        assert time.monotonic() - forged_at <= 1.0 + 1.5  # stale period, a period and scrapes
        await all_fresh_after(agents)
        assert not agents.on_safe_cap.any()


async def test_kill_9_then_restart_safe_caps_at_ttl_and_new_commands_accepted(
    mosquitto: Mosquitto, daemon: Daemon
) -> None:
    daemon.start()
    async with agents_up(cluster_for_test(), mosquitto.port) as agents:
        await all_fresh_after(agents, 20.0)
        assert await asyncio.to_thread(daemon.signal, signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        fell_at = await wait_until(lambda: bool(agents.on_safe_cap.all()), TTL_S + 5)
        report("kill -9: last rack on safe caps after", fell_at - killed_at, "s")
        assert TTL_S * 0.5 <= fell_at - killed_at <= TTL_S + 1.0
        # The commands carried the controller's derived safe caps, which replace the configured
        # 250 W: every GPU ends on them.
        safe_w = agents.safe_caps_w
        assert not np.allclose(safe_w, SAFE_CAP_W)
        await wait_until(lambda: bool(np.allclose(agents.cluster.cap_w, safe_w)), 3.0)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="reader") as reader:
            await reader.subscribe(wire.status_topic(SITE), qos=1)
            async with asyncio.timeout(5):
                status = wire.decode_status(bytes((await anext(reader.messages)).payload))  # type: ignore[arg-type]
            assert status.state == "offline"  # the last will
        daemon.start()
        back_at = await wait_until(lambda: not agents.on_safe_cap.any(), 20.0)
        report(
            "kill -9: every rack commanded again after restart", back_at - daemon.started_at, "s"
        )
        assert agents.rejected.sum() == 0  # a new instance's sequence is accepted from 1


async def test_broker_restart_gives_every_rack_a_fresh_command_within_5_s(
    mosquitto: Mosquitto, daemon: Daemon
) -> None:
    daemon.start()
    async with agents_up(cluster_for_test(), mosquitto.port) as agents:
        await all_fresh_after(agents, 20.0)
        await asyncio.to_thread(mosquitto.stop)
        await asyncio.sleep(3.0)  # longer than the TTL: the racks fall to their safe caps
        await asyncio.to_thread(mosquitto.start)
        returned_at = time.monotonic()
        fresh_at = await all_fresh_after(agents, 10.0)
        report(
            "broker restart: every rack commanded after the broker's return",
            fresh_at - returned_at,
            "s",
        )
        assert fresh_at - returned_at <= 5.0
        assert daemon.alive()


async def test_the_daemon_leaves_offline_when_a_fault_ends_it(mosquitto: Mosquitto) -> None:
    """Not a stop but a bug (here a decision that raises): status `offline`, the error out."""
    cluster = cluster_for_test()
    policy = fleet_policy(cluster, site=SITE, port=mosquitto.port, client_id="ctl", sections="")

    def broken(*args: Any, **kwargs: Any) -> Any:
        if controller.runtime.mqtt_connected:
            raise ZeroDivisionError("a bug in the decision")
        return decide(*args, **kwargs)

    controller = Controller(policy, decider=broken)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="reader") as reader:
        await reader.subscribe(wire.status_topic(SITE), qos=1)
        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.timeout(10):
                await controller.run(asyncio.Event())
        assert info.group_contains(ZeroDivisionError)
        states = []
        async with asyncio.timeout(5):
            async for message in reader.messages:
                states.append(wire.decode_status(bytes(message.payload)).state)  # type: ignore[arg-type]
                if states[-1] == "offline":
                    break
        assert states[0] == "online"  # it had announced itself, and took that back on its way out


@pytest.mark.parametrize("step_s", [-600.0, 600.0])
async def test_a_step_of_the_controllers_clock_keeps_racks_commanded(
    mosquitto: Mosquitto, step_s: float
) -> None:
    cluster = cluster_for_test()
    offset = [0.0]  # seconds added to the controller's wall clock
    controller = Controller(
        fleet_policy(cluster, site=SITE, port=mosquitto.port, client_id="ctl", sections=""),
        clock=lambda: time.time() + offset[0],
    )
    rt = controller.runtime
    async with agents_up(cluster, mosquitto.port) as agents, running(controller):
        await all_fresh_after(agents, 20.0)
        offset[0] = step_s
        stepped_at = time.monotonic()
        stale_seen = 0
        while time.monotonic() - stepped_at < 2 * 3.0:  # two TTLs of the harness policy
            stale_seen = max(
                stale_seen, int(rt.stale_rack.sum()) if rt.stale_rack is not None else 0
            )
            await asyncio.sleep(0.05)
        await all_fresh_after(agents, 5.0)
        assert not agents.on_safe_cap.any()
        assert agents.counters.fallbacks.sum() == 0
        assert agents.rejected.sum() == 0
        assert stale_seen == 0  # no mass staleness, forward or back
        assert rt.ingest.counters.rejected["clock_skew"] == 0


async def test_a_racks_credentials_cannot_kick_the_controller_off(
    secured: SecuredBroker, tmp_path: Path
) -> None:
    password_file = tmp_path / "controller.pw"
    password_file.write_text(secured.passwords[CONTROLLER])
    daemon = Daemon(
        tmp_path,
        secured.port,
        mqtt_extra=f", username: {CONTROLLER}, client_id: {CONTROLLER},"
        f" password_file: {password_file}",
    )
    daemon.start()
    try:
        await wait_until_metric(daemon, "rheostat_mqtt_connected", 1.0)
        for _ in range(5):
            impostor = aiomqtt.Client(
                "127.0.0.1",
                secured.port,
                username="r001",
                password=secured.passwords["r001"],
                identifier=CONTROLLER,
                timeout=5,
            )
            async with impostor:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert await daemon.metric("rheostat_mqtt_connected") == 1.0
        assert await daemon.metric("rheostat_mqtt_reconnects_total") == 0.0
    finally:
        daemon.stop()


async def metric_at_least(daemon: Daemon, name: str, value: float) -> None:
    async with asyncio.timeout(10):
        while await daemon.metric(name) < value:
            await asyncio.sleep(0.1)


async def wait_until_metric(daemon: Daemon, name: str, value: float) -> None:
    async with asyncio.timeout(20):
        while await daemon.metric(name) != value:
            await asyncio.sleep(0.1)
