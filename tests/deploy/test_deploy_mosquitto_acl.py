"""The production broker settings in deploy/mosquitto/ against a real Mosquitto.

The broker runs the shipped ACL file unchanged and the shipped mosquitto.conf with only its ports,
file locations and log sink replaced, TLS listener included (with a throwaway CA from `openssl`);
the password file is made with the real `mosquitto_passwd`. What must hold: a rack's credentials
publish only their own telemetry and read only their own commands, the controller's read all
telemetry and write every command, and nobody gets in anonymously or with a wrong password.

Denied traffic is shown by its absence, which is only meaningful against a delivery that did happen:
each check sends a marker through the same broker after the forged messages and asserts the marker
is the first thing that arrives (the broker delivers to one subscriber in the order it accepted).
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from controller import wire
from tests.services import Mosquitto, free_port, require_binary, wait_for_port

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
SITE = "dc1"
CONTROLLER = "rheostat-controller"
#: The active/standby pair's users (deploy/k8s-ha/): one per replica.
REPLICAS = ("rheostat-controller-0", "rheostat-controller-1")
#: The ingest workers' users (`controller.shard.worker.worker_username`), the controller's password.
INGEST_USERS = tuple(f"{CONTROLLER}-ingest-{i}" for i in range(4))
GRID = "rheostat-grid"
FACILITY = "rheostat-facility"
SCHEDULER = "rheostat-scheduler"
RACKS = ("r001", "r002")
#: A user name that would widen a `%u` pattern if Mosquitto substituted it ("#" cannot be one: the
#: password file reads a line starting with it as a comment).
WILDCARD_USERS = ("+",)
#: Where the shipped file expects its files on a broker host (deploy/README.md, "Broker").
HOST_DIR = "/etc/mosquitto/rheostat"


@dataclass(frozen=True)
class SecuredBroker:
    """The shipped config running: `port` is its loopback listener, `tls_port` its TLS one."""

    port: int
    tls_port: int
    ca_file: Path
    passwords: dict[str, str]

    def client(
        self, user: str, *, password: str | None = None, tls: bool = False
    ) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.tls_port if tls else self.port,
            username=user,
            password=self.passwords[user] if password is None else password,
            identifier=f"test-{user}-{secrets.token_hex(3)}",
            tls_context=ssl.create_default_context(cafile=self.ca_file) if tls else None,
            timeout=5,
        )


def production_config(files_dir: Path, *, tls_port: int, loopback_port: int) -> str:
    """The shipped mosquitto.conf with only its ports, file locations and log sink replaced."""
    text = (DEPLOY / "mosquitto.conf").read_text()
    replacements = {
        "listener 8883\n": f"listener {tls_port} 127.0.0.1\n",
        "listener 1883 127.0.0.1\n": f"listener {loopback_port} 127.0.0.1\n",
        f"{HOST_DIR}/acl": str(DEPLOY / "acl"),
        HOST_DIR: str(files_dir),
        "log_dest syslog\n": "",
    }
    for old, new in replacements.items():
        assert old in text, f"mosquitto.conf no longer holds {old!r}"
        text = text.replace(old, new)
    assert "allow_anonymous false" in text
    return text


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1, laid out as the config expects."""
    openssl = require_binary("openssl")
    files = tmp_path_factory.mktemp("mosquitto-files")
    tls = files / "tls"
    tls.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test-ca"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        [
            *("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-days", "1", "-out", "server.crt", "-extfile", "san.cnf"),
        ],
    ]
    (tls / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for step in steps:
        subprocess.run([openssl, *step], cwd=tls, check=True, capture_output=True)
    return files


@pytest.fixture
def secured(tmp_path: Path, tls_files: Path) -> Iterator[SecuredBroker]:
    passwd_bin = require_binary("mosquitto_passwd")
    files = tmp_path / "files"
    shutil.copytree(tls_files, files)
    passwords = {
        user: secrets.token_urlsafe(12)
        for user in (CONTROLLER, *REPLICAS, GRID, FACILITY, SCHEDULER, *RACKS, *WILDCARD_USERS)
    }
    passwords.update(dict.fromkeys(INGEST_USERS, passwords[CONTROLLER]))
    for i, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [passwd_bin, *create, "-b", str(files / "passwd"), user, password],
            check=True,
            capture_output=True,
        )
    tls_port, loopback_port = free_port(), free_port()
    # Started as root, Mosquitto drops to the `mosquitto` user, which cannot read pytest's private
    # temporary directory: keep it as whoever runs the tests.
    broker = Mosquitto(
        require_binary("mosquitto"),
        tmp_path,
        extra_config=production_config(files, tls_port=tls_port, loopback_port=loopback_port)
        + f"user {getpass.getuser()}\n",
    )
    try:
        broker.start()
        wait_for_port(tls_port)
        wait_for_port(loopback_port)
        yield SecuredBroker(loopback_port, tls_port, files / "tls" / "ca.crt", passwords)
    finally:
        broker.stop()


async def first_message(client: aiomqtt.Client, timeout_s: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            return message
    raise AssertionError("the message stream ended")


async def nothing_arrives(client: aiomqtt.Client, wait_s: float) -> None:
    with pytest.raises(TimeoutError):
        await first_message(client, wait_s)


@pytest.fixture
async def controller(secured: SecuredBroker) -> AsyncIterator[aiomqtt.Client]:
    async with secured.client(CONTROLLER) as client:
        yield client


@pytest.mark.parametrize("password", [None, "wrong-password"])
async def test_anonymous_and_wrong_passwords_are_refused(
    secured: SecuredBroker, password: str | None
) -> None:
    client = (
        aiomqtt.Client("127.0.0.1", secured.port, timeout=5)
        if password is None
        else secured.client("r001", password=password)
    )
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass


async def test_racks_and_controller_exchange_their_own_traffic(
    secured: SecuredBroker, controller: aiomqtt.Client
) -> None:
    async with secured.client("r001") as rack:
        await controller.subscribe(wire.telemetry_filter(SITE), qos=1)
        await rack.subscribe(wire.command_topic(SITE, "r001"), qos=1)
        await rack.publish(wire.telemetry_topic(SITE, "r001"), b"t1", qos=1)
        got = await first_message(controller)
        assert (str(got.topic), got.payload) == (wire.telemetry_topic(SITE, "r001"), b"t1")

        await controller.publish(wire.command_topic(SITE, "r001"), b"c1", qos=1)
        got = await first_message(rack)
        assert (str(got.topic), got.payload) == (wire.command_topic(SITE, "r001"), b"c1")

        # The status is retained: a rack that subscribes later still reads it.
        status = wire.status_topic(SITE)
        await controller.publish(status, b"online", qos=1, retain=True)
        await rack.subscribe(status, qos=1)
        got = await first_message(rack)
        assert (str(got.topic), got.payload) == (status, b"online")


async def test_a_rack_cannot_publish_commands_or_status(
    secured: SecuredBroker, controller: aiomqtt.Client
) -> None:
    async with secured.client("r001") as rogue, secured.client("r002") as victim:
        await rogue.subscribe(wire.command_topic(SITE, "r001"), qos=1)
        await victim.subscribe(wire.command_topic(SITE, "r002"), qos=1)
        # QoS 1 returns once the broker has taken (and here dropped) each message.
        await rogue.publish(wire.command_topic(SITE, "r002"), b"forged", qos=1)
        await rogue.publish(wire.command_topic(SITE, "r001"), b"forged-self", qos=1)
        await rogue.publish(wire.status_topic(SITE), b"offline", qos=1, retain=True)

        await controller.publish(wire.command_topic(SITE, "r002"), b"marker", qos=1)
        await controller.publish(wire.command_topic(SITE, "r001"), b"marker", qos=1)
        assert (await first_message(victim)).payload == b"marker"
        assert (await first_message(rogue)).payload == b"marker"
        # Nor may it speak for the controller: no retained status was stored.
        await victim.subscribe(wire.status_topic(SITE), qos=1)
        await controller.publish(wire.command_topic(SITE, "r002"), b"marker-2", qos=1)
        assert (await first_message(victim)).payload == b"marker-2"


async def test_a_rack_cannot_publish_another_racks_telemetry(
    secured: SecuredBroker, controller: aiomqtt.Client
) -> None:
    async with secured.client("r001") as rogue:
        await controller.subscribe(wire.telemetry_filter(SITE), qos=1)
        await rogue.publish(wire.telemetry_topic(SITE, "r002"), b"forged", qos=1)
        await rogue.publish(wire.telemetry_topic(SITE, "r001"), b"own", qos=1)
        got = await first_message(controller)
        assert (str(got.topic), got.payload) == (wire.telemetry_topic(SITE, "r001"), b"own")


@pytest.mark.parametrize("user", ["r001", *WILDCARD_USERS])
async def test_a_rack_cannot_read_another_racks_commands(
    secured: SecuredBroker, controller: aiomqtt.Client, user: str
) -> None:
    async with secured.client(user) as rogue, secured.client("r002") as victim:
        for topic in (wire.command_topic(SITE, "r002"), wire.command_filter(SITE), "#"):
            await rogue.subscribe(topic, qos=1)
        await victim.subscribe(wire.command_topic(SITE, "r002"), qos=1)
        await controller.publish(wire.command_topic(SITE, "r002"), b"for-r002", qos=1)
        assert (await first_message(victim)).payload == b"for-r002"
        if user == "r001":
            # A rack's own command is the marker: the other rack's, sent first, must not precede it.
            await controller.publish(wire.command_topic(SITE, "r001"), b"for-r001", qos=1)
            got = await first_message(rogue)
            assert (str(got.topic), got.payload) == (wire.command_topic(SITE, "r001"), b"for-r001")
        else:
            # A wildcard user name owns no topic, so there is no marker to wait for: the broker
            # fanned the command out to every subscriber before the victim got it.
            await nothing_arrives(rogue, 0.3)


async def test_tls_listener_serves_racks_under_the_same_acl(
    secured: SecuredBroker, controller: aiomqtt.Client
) -> None:
    await controller.subscribe(wire.telemetry_filter(SITE), qos=1)
    async with secured.client("r001", tls=True) as rack:
        await rack.publish(wire.telemetry_topic(SITE, "r002"), b"forged", qos=1)
        await rack.publish(wire.telemetry_topic(SITE, "r001"), b"over-tls", qos=1)
        got = await first_message(controller)
        assert (str(got.topic), got.payload) == (wire.telemetry_topic(SITE, "r001"), b"over-tls")
    # Plain MQTT on the TLS port gets no session.
    plain = aiomqtt.Client("127.0.0.1", secured.tls_port, username="r001", timeout=1)
    with pytest.raises(aiomqtt.MqttError):
        async with plain:
            pass


async def test_grid_events_and_the_facility_meter_reach_only_the_controller(
    secured: SecuredBroker, controller: aiomqtt.Client
) -> None:
    event = f"rheostat/v1/{SITE}/grid/event/ev-1"
    response = f"rheostat/v1/{SITE}/grid/response/ev-1"
    facility = f"rheostat/v1/{SITE}/facility"
    for topic in (f"rheostat/v1/{SITE}/grid/event", f"rheostat/v1/{SITE}/grid/event/+", facility):
        await controller.subscribe(topic, qos=1)
    async with (
        secured.client(GRID) as grid,
        secured.client(FACILITY) as meter,
        secured.client("r001") as rack,
    ):
        await grid.subscribe(f"rheostat/v1/{SITE}/grid/response/+", qos=1)
        # A rack can neither announce an event nor pose as the facility meter.
        await rack.publish(event, b"forged", qos=1)
        await rack.publish(facility, b"forged", qos=1)
        await grid.publish(event, b"event", qos=1)
        got = await first_message(controller)
        assert (str(got.topic), got.payload) == (event, b"event")
        await meter.publish(facility, b"meter", qos=1)
        got = await first_message(controller)
        assert (str(got.topic), got.payload) == (facility, b"meter")
        await controller.publish(response, b"optIn", qos=1)
        got = await first_message(grid)
        assert (str(got.topic), got.payload) == (response, b"optIn")


async def test_forecasts_and_jobs_come_only_from_their_publishers(
    secured: SecuredBroker, controller: aiomqtt.Client
) -> None:
    signal = f"rheostat/v1/{SITE}/grid/signal"
    job = f"rheostat/v1/{SITE}/jobs/sweep-1"
    await controller.subscribe(signal, qos=1)
    await controller.subscribe(f"rheostat/v1/{SITE}/jobs/+", qos=1)
    async with (
        secured.client(GRID) as grid,
        secured.client(SCHEDULER) as scheduler,
        secured.client("r001") as rack,
    ):
        # A rack can neither forge a forecast nor report a job; the scheduler cannot forecast.
        await rack.publish(signal, b"forged", qos=1)
        await rack.publish(job, b"forged", qos=1)
        await scheduler.publish(signal, b"forged", qos=1)
        await grid.publish(signal, b"forecast", qos=1)
        got = await first_message(controller)
        assert (str(got.topic), got.payload) == (signal, b"forecast")
        await scheduler.publish(job, b"job", qos=1)
        got = await first_message(controller)
        assert (str(got.topic), got.payload) == (job, b"job")


async def test_a_racks_credentials_cannot_take_the_controllers_session(
    secured: SecuredBroker,
) -> None:
    """Client ids are bound to users: a rack connecting under the controller's client id gets
    its own user name as id, and the controller's session stays up."""
    controller = aiomqtt.Client(
        "127.0.0.1",
        secured.port,
        username=CONTROLLER,
        password=secured.passwords[CONTROLLER],
        identifier=CONTROLLER,
        timeout=5,
    )
    impostor = aiomqtt.Client(
        "127.0.0.1",
        secured.port,
        username="r001",
        password=secured.passwords["r001"],
        identifier=CONTROLLER,
        timeout=5,
    )
    async with controller:
        await controller.subscribe(wire.telemetry_filter(SITE), qos=1)
        for round_ in range(3):  # again and again, as the attack did
            async with impostor:
                await impostor.publish(wire.telemetry_topic(SITE, "r001"), b"%d" % round_, qos=1)
                got = await first_message(controller)
                assert got.payload == b"%d" % round_
        # Still connected: a QoS 1 round trip through the broker succeeds on the same session.
        await controller.publish(wire.command_topic(SITE, "r001"), b"still-here", qos=1)
        async with secured.client("r002") as rack:
            await rack.publish(wire.telemetry_topic(SITE, "r002"), b"marker", qos=1)
            got = await first_message(controller)
            assert (str(got.topic), got.payload) == (wire.telemetry_topic(SITE, "r002"), b"marker")


async def test_node_agents_stay_inside_their_rack(
    secured: SecuredBroker, controller: aiomqtt.Client
) -> None:
    """A node agent logs in as its rack: its own rack's node topics only, never another's."""
    await controller.subscribe(wire.node_telemetry_filter(SITE), qos=1)
    async with secured.client("r001") as node, secured.client("r002") as victim:
        await node.publish(wire.node_telemetry_topic(SITE, "r002", "gpu-b01"), b"forged", qos=1)
        await node.publish(wire.node_telemetry_topic(SITE, "r001", "gpu-a01"), b"own", qos=1)
        got = await first_message(controller)
        assert (str(got.topic), got.payload) == (
            wire.node_telemetry_topic(SITE, "r001", "gpu-a01"),
            b"own",
        )
        for topic in ("rheostat/v1/+/command/r002/+", "rheostat/v1/+/command/+/+"):
            await node.subscribe(topic, qos=1)
        await node.subscribe(wire.node_command_topic(SITE, "r001", "gpu-a01"), qos=1)
        await victim.subscribe(wire.node_command_topic(SITE, "r002", "gpu-b01"), qos=1)
        await node.publish(wire.node_command_topic(SITE, "r002", "gpu-b01"), b"forged", qos=1)
        await controller.publish(wire.node_command_topic(SITE, "r002", "gpu-b01"), b"b", qos=1)
        assert (await first_message(victim)).payload == b"b"
        await controller.publish(wire.node_command_topic(SITE, "r001", "gpu-a01"), b"a", qos=1)
        got = await first_message(node)
        assert (str(got.topic), got.payload) == (
            wire.node_command_topic(SITE, "r001", "gpu-a01"),
            b"a",
        )


async def test_both_replicas_of_a_pair_stay_connected_and_read_and_command(
    secured: SecuredBroker,
) -> None:
    """An active/standby pair connects at once, each under its own user: neither session is taken
    by the other (the broker binds client ids to users), both read every rack's telemetry, and
    whichever leads may command a rack."""
    first, second = (
        aiomqtt.Client(
            "127.0.0.1",
            secured.port,
            username=user,
            password=secured.passwords[user],
            identifier="rheostat-controller-dc1",  # the policy's client id, the same in both
            timeout=5,
        )
        for user in REPLICAS
    )
    async with first, second:
        for replica in (first, second):
            await replica.subscribe(wire.telemetry_filter(SITE), qos=1)
        async with secured.client("r001") as rack:
            await rack.subscribe(wire.command_topic(SITE, "r001"), qos=1)
            for round_ in range(2):
                await rack.publish(wire.telemetry_topic(SITE, "r001"), b"%d" % round_, qos=1)
                for replica in (first, second):
                    got = await first_message(replica)
                    assert got.payload == b"%d" % round_
            for replica in (first, second):
                await replica.publish(wire.command_topic(SITE, "r001"), b"cmd", qos=1)
                got = await first_message(rack)
                assert got.payload == b"cmd"
