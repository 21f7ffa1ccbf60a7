"""How the daemon meets the world: the `mqtt` (broker), `metrics` (HTTP endpoint) and `logging`
sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, model_validator

from controller.config.base import PositiveW, Section


class TlsSection(Section):
    ca_file: Path | None = None
    """CA certificate(s) the broker's certificate is checked against (PEM)."""
    cert_file: Path | None = None
    """Client certificate for the broker (PEM)."""
    key_file: Path | None = None
    """Private key of the client certificate (PEM)."""
    insecure: bool = False
    """Skip the check of the broker's certificate host name (tests only)."""


class MqttSection(Section):
    """Broker connection. The password belongs in the environment or a secrets directory
    (`RHEOSTAT_MQTT_PASSWORD`, see `controller.settings`), not in the file.
    """

    host: str = "127.0.0.1"
    """Broker host name or address."""
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    """Broker port."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT version: '5' or '3.1.1'."""
    client_id: Annotated[str, Field(min_length=1)] = "rheostat-controller"
    """MQTT client id of the controller."""
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    """MQTT keepalive interval. Units: s."""
    username: str | None = None
    """Broker user name, if the broker asks for one."""
    password: SecretStr | None = None
    """Broker password written in the file; prefer RHEOSTAT_MQTT_PASSWORD or a secrets directory
    (rheostat check warns).
    """
    password_env: str | None = None
    """Deprecated: an environment variable holding the password; set RHEOSTAT_MQTT_PASSWORD
    instead.
    """
    password_file: Path | None = None
    """Deprecated: a file holding the password; use a secrets directory file named
    rheostat_mqtt_password.
    """
    tls: TlsSection | None = None
    """TLS to the broker; unset: plain TCP."""
    timeout_s: PositiveW = 10.0
    """Timeout for connecting and for acknowledgements. Units: s."""

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give at most one of password_env and password_file")
        return self


#: Default metrics port. Prometheus' list of exporter ports (9100-9999) has been full since 2023
#: and 9464 is OpenTelemetry's Prometheus exporter; this one clashes with no well-known exporter,
#: sits below Linux's ephemeral range (32768+) and keeps the old number recognisable.
DEFAULT_METRICS_PORT = 19464


class MetricsSection(Section):
    host: str = "127.0.0.1"
    """Address the /metrics, /livez and /readyz endpoint listens on."""
    port: Annotated[int, Field(ge=0, lt=65536)] = DEFAULT_METRICS_PORT
    """Port of that endpoint; 0 picks a free one."""
    per_gpu: bool = False
    """Also export per-GPU series (high cardinality on large fleets)."""


class LoggingSection(Section):
    format: Literal["auto", "json", "console"] = "auto"
    """json, console, or auto: JSON lines unless stderr is a terminal."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe level logged; per-tick detail is at debug, a periodic summary at info."""
    summary_period_s: Annotated[float, Field(gt=0)] = 60.0
    """How often the daemon logs a summary of its ticks at info. Units: s."""
