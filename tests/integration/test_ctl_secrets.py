"""The daemon logs in to a real Mosquitto with the password from a secrets directory (systemd's
`$CREDENTIALS_DIRECTORY`), and a wrong one is refused and logged with the broker it tried."""

from __future__ import annotations

import getpass
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing

from controller import settings
from controller.daemon import Controller
from controller.policy_file import load_policy
from tests.integration.harness import running, wait_until
from tests.services import Mosquitto, require_binary

pytestmark = pytest.mark.integration

USER = "rheostat-controller"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, str]]:
    password = secrets.token_urlsafe(12)
    passwd = tmp_path / "passwd"
    subprocess.run(
        [require_binary("mosquitto_passwd"), "-c", "-b", str(passwd), USER, password],
        check=True,
        capture_output=True,
    )
    mosquitto = Mosquitto(
        require_binary("mosquitto"),
        tmp_path,
        extra_config=f"allow_anonymous false\npassword_file {passwd}\nuser {getpass.getuser()}\n",
    )
    mosquitto.start()
    try:
        yield mosquitto, password
    finally:
        mosquitto.stop()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("RHEOSTAT_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.setattr(settings, "KUBERNETES_SECRETS_DIR", tmp_path / "none")


def _controller(tmp_path: Path, port: int) -> Controller:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "site: {name: sec, topology: {generate: {gpus: 8}}}\n"
        "control: {tick_period_s: 0.1, command_ttl_s: 3}\n"
        f"mqtt: {{port: {port}, username: {USER}}}\nmetrics: {{port: 0}}\n"
    )
    return Controller(load_policy(path), policy_path=path)


async def test_password_from_systemd_credentials(
    broker: tuple[Mosquitto, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mosquitto, password = broker
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "rheostat_mqtt_password").write_text(password + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    controller = _controller(tmp_path, mosquitto.port)
    async with running(controller):
        await wait_until(lambda: controller.runtime.mqtt_connected, timeout_s=10)


async def test_a_wrong_password_is_refused_and_names_the_broker(
    broker: tuple[Mosquitto, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mosquitto, _ = broker
    monkeypatch.setenv("RHEOSTAT_MQTT_PASSWORD", "not-the-password")
    controller = _controller(tmp_path, mosquitto.port)
    with structlog.testing.capture_logs() as logs:
        async with running(controller):
            await wait_until(
                lambda: any(e["event"] == "cannot connect to the broker" for e in logs),
                timeout_s=10,
            )
            assert not controller.runtime.mqtt_connected
    refused = next(e for e in logs if e["event"] == "cannot connect to the broker")
    assert refused["broker"] == f"127.0.0.1:{mosquitto.port}"
    assert "not-the-password" not in repr(logs)
