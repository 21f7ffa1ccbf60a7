"""Secrets and deployment overrides from the environment and a secrets directory.

The policy file says how the site is controlled; what differs between deployments of the same
file, and what must never be written in it, comes from outside:

- Secrets: `RHEOSTAT_MQTT_PASSWORD`, from the environment or from a file of that name
  (`rheostat_mqtt_password`, case-insensitive) in a secrets directory: `$RHEOSTAT_SECRETS_DIR`,
  systemd's `$CREDENTIALS_DIRECTORY` (`LoadCredential=`), or `/run/secrets/rheostat` (a
  Kubernetes Secret mounted as a volume). Read when the daemon connects, so a rotated secret is
  picked up on the next reconnect without a restart.
- Overrides: any policy-file field, as `RHEOSTAT_<SECTION>__<FIELD>` (`__` between levels, e.g.
  `RHEOSTAT_MQTT__HOST=broker.example`, `RHEOSTAT_MQTT__TLS__CA_FILE=/etc/ssl/ca.pem`,
  `RHEOSTAT_METRICS__PORT=9100`), or a whole section as JSON (`RHEOSTAT_LOGGING='{"level":
  "debug"}'`). They are merged over the file before it is validated, so a bad value is reported
  like one in the file.

Precedence, highest first: the environment, the secrets directory, the policy file. The older
`mqtt.password_env` / `mqtt.password_file` keys still work, below all of these, and are reported
as deprecated by `rheostat check`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller.config import MqttSection, PolicyFile
from policies.errors import ConfigError

ENV_PREFIX = "RHEOSTAT_"
#: Where errors in overrides are said to be, in place of a file name.
ENVIRONMENT = "environment"
#: Where a Kubernetes Secret mounted as a volume is looked for (or pass it in the environment).
KUBERNETES_SECRETS_DIR = Path("/run/secrets/rheostat")
#: Policy-file sections that may be overridden from the environment.
SECTIONS = tuple(PolicyFile.model_fields)


def secrets_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The secrets directories that exist, in precedence order (first wins)."""
    env = os.environ if environ is None else environ
    candidates = [
        env.get(f"{ENV_PREFIX}SECRETS_DIR"),
        env.get("CREDENTIALS_DIRECTORY"),
        str(KUBERNETES_SECRETS_DIR),
    ]
    return [Path(c) for c in candidates if c and Path(c).is_dir()]


class Secrets(BaseSettings):
    """Values that never belong in a policy file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", frozen=True
    )

    mqtt_password: SecretStr | None = None


class _Overrides(BaseSettings):
    """Every policy section as an optional mapping, filled from `RHEOSTAT_<SECTION>__...`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
    )


def load_secrets() -> Secrets:
    """Secrets from the environment and the secrets directories, read now."""
    dirs = secrets_dirs()
    try:
        return Secrets(_secrets_dir=[str(d) for d in reversed(dirs)] or None)  # last one wins
    except ValidationError as exc:
        raise ConfigError(f"bad secret: {exc.errors()[0]['msg']}") from None


def environment_overrides() -> dict[str, Any]:
    """Policy-file fields set in the environment, as a nested mapping (empty when none are)."""
    model = _overrides_model()
    try:
        values = model()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ENV_PREFIX + "__".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(first["msg"], file=ENVIRONMENT, field=name) from None
    return {k: v for k, v in values.model_dump().items() if v is not None}


def _overrides_model() -> type[_Overrides]:
    fields: dict[str, Any] = dict.fromkeys(SECTIONS, (dict[str, Any] | None, None))
    return create_model("Overrides", __base__=_Overrides, **fields)


def merge(base: Any, overrides: Mapping[str, Any]) -> Any:
    """`overrides` deep-merged into the mapping `base` in place (ruamel's maps keep their lines)."""
    for key, value in overrides.items():
        current = base.get(key) if isinstance(base, Mapping) else None
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merge(current, value)
        else:
            base[key] = value
    return base


def _leaf_paths(
    overrides: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    out = []
    for key, value in overrides.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            out.extend(_leaf_paths(value, path))
        else:
            out.append(path)
    return out


def _variable_for(path: tuple[str, ...]) -> str:
    """The variable that set `path`: itself, or the section variable holding it as JSON."""
    present = {k.upper() for k in os.environ}
    for k in range(len(path), 0, -1):
        name = ENV_PREFIX + "__".join(path[:k]).upper()
        if name in present:
            return name
    return ENV_PREFIX + "__".join(path).upper()


def blame_environment(errors: list[ConfigError], overrides: Mapping[str, Any]) -> list[ConfigError]:
    """Errors in values the environment set, reported against the variable, not the file."""
    paths = _leaf_paths(overrides)
    out = []
    for error in errors:
        field = tuple((error.field or "").replace("[", ".[").split("."))
        path = next((p for p in paths if field[: len(p)] == p), None)
        if path is None:
            out.append(error)
            continue
        name = _variable_for(path)
        if name != ENV_PREFIX + "__".join(field).upper():
            name = f"{name} ({error.field})"
        out.append(ConfigError(error.message, file=ENVIRONMENT, field=name))
    return out


def mqtt_password(section: MqttSection) -> str | None:
    """The broker password, read at connect time: secrets first, then the file's own keys."""
    secret = load_secrets().mqtt_password
    if secret is not None:
        return secret.get_secret_value()
    if section.password is not None:
        return section.password.get_secret_value()
    if section.password_env is not None:  # deprecated
        value = os.environ.get(section.password_env)
        if value is None:
            raise ConfigError(
                f"environment variable {section.password_env} is not set",
                field="mqtt.password_env",
            )
        return value
    if section.password_file is not None:  # deprecated
        try:
            return section.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", field="mqtt.password_file") from None
    return None
