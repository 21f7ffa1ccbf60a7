"""What `rheostat check` adds to a validation error or a valid file: near-miss field names and
warnings about things that validate but should not be there (an inline password, deprecated keys).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel

from controller.config import PolicyFile

_INDEX = re.compile(r"\[\d+\]")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
    return found


def model_at(path: list[str], root: type[BaseModel] = PolicyFile) -> type[BaseModel] | None:
    """The model that holds the field at dotted `path` (list indices dropped), if any."""
    model = root
    for name in path:
        info = model.model_fields.get(name)
        if info is None:
            return None
        models = _models_in(info.annotation)
        if not models:
            return None
        model = models[0]
    return model


def suggestion(field: str | None, root: type[BaseModel] = PolicyFile) -> str | None:
    """`did you mean ...?` for an unknown field close to a known one, else None."""
    if not field:
        return None
    parts = _INDEX.sub("", field).split(".")
    model = model_at(parts[:-1], root)
    if model is None or parts[-1] in model.model_fields:
        return None  # not an unknown field: its value is what is wrong
    close = difflib.get_close_matches(parts[-1], list(model.model_fields), n=1, cutoff=0.6)
    if not close:
        return None
    head = field.rsplit(".", 1)[0] + "." if "." in field else ""
    return f"did you mean {head}{close[0]}?"


def warnings(config: PolicyFile) -> list[tuple[str, str]]:
    """(field, warning) for a policy file that validates but should change."""
    out = []
    mqtt = config.mqtt
    if mqtt.password is not None:
        out.append(
            (
                "mqtt.password",
                (
                    "the broker password is written in the policy file: move it to "
                    "RHEOSTAT_MQTT_PASSWORD or a secrets directory file rheostat_mqtt_password"
                ),
            )
        )
    if mqtt.password_env is not None:
        out.append(
            (
                "mqtt.password_env",
                "deprecated: set RHEOSTAT_MQTT_PASSWORD instead (still read for now)",
            )
        )
    if mqtt.password_file is not None:
        out.append(
            (
                "mqtt.password_file",
                (
                    "deprecated: name the file rheostat_mqtt_password in a secrets directory "
                    "(RHEOSTAT_SECRETS_DIR, systemd's CREDENTIALS_DIRECTORY) instead"
                ),
            )
        )
    return out
