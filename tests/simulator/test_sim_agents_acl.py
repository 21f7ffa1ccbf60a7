"""Agents against a broker that enforces the production ACL: each logs in as its own rack."""

from __future__ import annotations

import asyncio
import getpass
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from controller import wire
from simulator.agents import RackAgents, run_rack_agents
from tests.services import Mosquitto, require_binary
from tests.simulator.test_sim_agents import SITE, command, small_cluster, wait_until

pytestmark = pytest.mark.integration

ACL = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "acl"
CONTROLLER = "rheostat-controller"
RACKS = ("r00000", "r00001")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    passwd_bin = require_binary("mosquitto_passwd")
    passwords = {user: secrets.token_urlsafe(12) for user in (CONTROLLER, *RACKS)}
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [passwd_bin, *create, "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    broker = Mosquitto(
        require_binary("mosquitto"),
        tmp_path,
        extra_config=f"allow_anonymous false\npassword_file {passwd}\nacl_file {ACL}\n"
        f"user {getpass.getuser()}\n",
    )
    broker.start()
    try:
        yield broker, passwords
    finally:
        broker.stop()


async def test_agents_log_in_as_their_rack_and_obey_the_acl(
    secured: tuple[Mosquitto, dict[str, str]],
) -> None:
    broker, passwords = secured
    cluster = small_cluster(lag_s=0.0)
    rack_passwords = {r: passwords[r] for r in RACKS}
    agents = RackAgents(
        cluster=cluster, site=SITE, period_s=0.2, time_scale=4.0, passwords=rack_passwords
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_rack_agents(
            cluster, host="127.0.0.1", port=broker.port, site=SITE, stop=stop, agents=agents
        )
    )
    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            identifier="ctl",
            username=CONTROLLER,
            password=passwords[CONTROLLER],
        ) as ctl:
            await ctl.subscribe(wire.telemetry_filter(SITE))
            seen: set[str] = set()
            async with asyncio.timeout(8):
                async for msg in ctl.messages:
                    seen.add(wire.rack_from_topic(str(msg.topic)))
                    if seen == set(RACKS):
                        break
            rack = RACKS[1]
            await ctl.publish(wire.command_topic(SITE, rack), command(rack, 420.0, 32), qos=1)
            await wait_until(lambda: agents.counters.commands_applied[1] == 1)
        rows = cluster.topology.rack_slice(1)
        await wait_until(lambda: bool(np.all(agents.caps_in_force_w[rows] == 420.0)))
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
    assert agents.counters.connects.min() >= 1
    assert agents.counters.commands_rejected.sum() == 0
    # The broker really refuses anyone without a login.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="anon"):
            pass
