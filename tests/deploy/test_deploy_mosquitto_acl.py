"""The production broker settings in deploy/mosquitto/ against a real Mosquitto.

The broker runs the shipped ACL file unchanged and the shipped mosquitto.conf with only what cannot
run in a test swapped out (its listeners, TLS files, syslog and the password file's location); the
password file is made with the real `mosquitto_passwd`. What must hold: a rack's credentials publish
only their own telemetry and read only their own commands, the controller's read all telemetry and
write every command, and nobody gets in anonymously or with a wrong password.

Denied traffic is shown by its absence, which is only meaningful against a delivery that did happen:
each check sends a marker through the same broker after the forged messages and asserts the marker
is the first thing that arrives (the broker delivers to one subscriber in the order it accepted).
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from controller import wire
from tests.services import Mosquitto, require_binary

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
SITE = "dc1"
CONTROLLER = "rheostat-controller"
RACKS = ("r001", "r002")
#: A user name that would widen a `%u` pattern if Mosquitto substituted it ("#" cannot be one: the
#: password file reads a line starting with it as a comment).
WILDCARD_USERS = ("+",)
#: Settings of the shipped file that name host paths or network ports; everything else is kept.
HOST_SPECIFIC = (
    "listener",
    "protocol",
    "cafile",
    "certfile",
    "keyfile",
    "tls_version",
    "require_certificate",
    "log_dest",
    "log_type",
    "password_file",
    "acl_file",
)


@dataclass(frozen=True)
class SecuredBroker:
    port: int
    passwords: dict[str, str]

    def client(self, user: str, *, password: str | None = None) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            username=user,
            password=self.passwords[user] if password is None else password,
            identifier=f"test-{user}-{secrets.token_hex(3)}",
            timeout=5,
        )


def production_settings() -> str:
    """The shipped mosquitto.conf without its host-specific lines."""
    kept = [
        line
        for line in (DEPLOY / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#") and line.split()[0] not in HOST_SPECIFIC
    ]
    assert any(line == "allow_anonymous false" for line in kept)
    return "\n".join(kept) + "\n"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredBroker]:
    passwd_bin = require_binary("mosquitto_passwd")
    passwd_file = tmp_path / "passwd"
    passwords = {user: secrets.token_urlsafe(12) for user in (CONTROLLER, *RACKS, *WILDCARD_USERS)}
    for i, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [passwd_bin, *create, "-b", str(passwd_file), user, password],
            check=True,
            capture_output=True,
        )
    # Started as root, Mosquitto drops to the `mosquitto` user, which cannot read pytest's private
    # temporary directory: keep it as whoever runs the tests.
    broker = Mosquitto(
        require_binary("mosquitto"),
        tmp_path,
        extra_config=production_settings()
        + f"user {getpass.getuser()}\npassword_file {passwd_file}\nacl_file {DEPLOY / 'acl'}\n",
    )
    try:
        broker.start()
        yield SecuredBroker(broker.port, passwords)
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
