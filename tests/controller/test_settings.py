"""Secrets and overrides from the environment and a secrets directory (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import settings
from controller.config import MqttSection
from controller.policy_file import load_policy
from controller.settings import mqtt_password
from policies.errors import ConfigError, ConfigErrors

POLICY = """\
site: {name: a, topology: {generate: {gpus: 8}}}
mqtt:
  host: file.example
  port: 1883
metrics: {port: 9000}
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RHEOSTAT_* variable or credentials directory from the machine leaks into a test."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("RHEOSTAT_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
    monkeypatch.setattr(settings, "KUBERNETES_SECRETS_DIR", tmp_path / "no-such-dir")


def _policy(tmp_path: Path, text: str = POLICY) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_environment_overrides_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RHEOSTAT_MQTT__HOST", "broker.example")
    monkeypatch.setenv("RHEOSTAT_MQTT__TLS__CA_FILE", "/etc/ssl/ca.pem")
    monkeypatch.setenv("RHEOSTAT_LOGGING", '{"level": "debug"}')
    config = load_policy(_policy(tmp_path)).config
    assert config.mqtt.host == "broker.example"
    assert config.mqtt.port == 1883  # the file's value where nothing overrides it
    assert config.mqtt.tls is not None
    assert str(config.mqtt.tls.ca_file) == "/etc/ssl/ca.pem"
    assert config.logging.level == "debug"
    assert config.metrics.port == 9000
    # without the environment, the file alone
    assert load_policy(_policy(tmp_path), environment=False).config.mqtt.host == "file.example"


def test_bad_override_is_reported_like_a_bad_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RHEOSTAT_METRICS__PORT", "99999")
    monkeypatch.setenv("RHEOSTAT_MQTT__DEADBAND", "1")
    with pytest.raises(ConfigErrors) as info:
        load_policy(_policy(tmp_path))
    blamed = {(e.file, e.line, e.field) for e in info.value.errors}
    assert blamed == {
        ("environment", None, "RHEOSTAT_METRICS__PORT"),
        ("environment", None, "RHEOSTAT_MQTT__DEADBAND"),
    }
    monkeypatch.delenv("RHEOSTAT_METRICS__PORT")
    monkeypatch.delenv("RHEOSTAT_MQTT__DEADBAND")
    monkeypatch.setenv("RHEOSTAT_LOGGING", '{"level": "loud"}')
    monkeypatch.setenv("RHEOSTAT_CONTROL__TICK_PERIOD_S", "2")
    path = _policy(tmp_path, POLICY + "capping: {deadband_w: -1}\n")
    with pytest.raises(ConfigErrors) as info:
        load_policy(path)
    blamed = {(e.file, e.line, e.field) for e in info.value.errors}
    assert blamed == {
        ("environment", None, "RHEOSTAT_LOGGING (logging.level)"),
        (str(path), 6, "capping.deadband_w"),  # the file's own error keeps its line
    }


def test_unparsable_section_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RHEOSTAT_LOGGING", "[1]")
    with pytest.raises(ConfigError) as info:
        load_policy(_policy(tmp_path))
    assert str(info.value) == "environment: RHEOSTAT_LOGGING: Input should be a valid dictionary"


def test_secret_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    legacy_file = tmp_path / "legacy"
    legacy_file.write_text("from-legacy-file\n")
    section = MqttSection(password_file=legacy_file)
    assert mqtt_password(section) == "from-legacy-file"
    section = MqttSection(password="inline", password_file=legacy_file)
    assert mqtt_password(section) == "inline"
    # systemd credentials (LoadCredential=) and a Kubernetes secret volume
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "rheostat_mqtt_password").write_text("from-credentials\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert mqtt_password(section) == "from-credentials"
    k8s = tmp_path / "k8s"
    k8s.mkdir()
    (k8s / "RHEOSTAT_MQTT_PASSWORD").write_text("from-kubernetes")
    monkeypatch.setattr(settings, "KUBERNETES_SECRETS_DIR", k8s)
    assert mqtt_password(section) == "from-credentials"  # systemd's directory comes first
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert mqtt_password(section) == "from-kubernetes"
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    (explicit / "rheostat_mqtt_password").write_text("from-explicit-dir")
    monkeypatch.setenv("RHEOSTAT_SECRETS_DIR", str(explicit))
    assert mqtt_password(section) == "from-explicit-dir"
    monkeypatch.setenv("RHEOSTAT_MQTT_PASSWORD", "from-env")
    assert mqtt_password(section) == "from-env"


def test_legacy_password_env_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLD_STYLE", "s3cret")
    assert mqtt_password(MqttSection(password_env="OLD_STYLE")) == "s3cret"
    assert mqtt_password(MqttSection()) is None


def test_password_is_never_printed() -> None:
    section = MqttSection(password="hunter2")
    assert "hunter2" not in repr(section)
    assert "hunter2" not in section.model_dump_json()
