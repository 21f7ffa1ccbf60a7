"""The one exception hierarchy every room of Rheostat raises.

It lives in the decision core because that is the one package every other package may import;
the daemon and the simulator re-raise these types rather than inventing their own, so callers can
catch `RheostatError` once and still read which file, field or rack was at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class RheostatError(Exception):
    """Root of every error Rheostat raises on purpose."""


class ConfigError(RheostatError):
    """A policy, scenario, inventory or snapshot file is invalid.

    Carries the file, the 1-based line (when known) and the dotted field path, so an operator can go
    straight to the offending line.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class ConfigErrors(ConfigError):
    """Several independent problems in one file, all reported at once rather than one per run."""

    def __init__(self, errors: list[ConfigError]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        self.errors = list(errors)
        first = errors[0]
        super().__init__(first.message, file=first.file, line=first.line, field=first.field)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self.errors)

    @classmethod
    def from_validation(
        cls, errors: Iterable[Mapping[str, Any]], *, doc: Any, source: str
    ) -> ConfigErrors:
        """Pydantic's `ValidationError.errors()` for a YAML file, each with its file and line.

        `doc` is the round-trip-parsed document (ruamel keeps each node's line in `lc`).
        """
        return cls(
            [
                ConfigError(
                    err["msg"],
                    file=source,
                    line=yaml_line(doc, tuple(err["loc"])),
                    field=".".join(str(s) for s in err["loc"]) or None,
                )
                for err in errors
            ]
        )


def yaml_line(doc: Any, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest part of `loc` present in a round-trip-parsed YAML document.

    Reads only the `lc` attribute ruamel sets on its containers, so any caller's document works
    and this module imports nothing.
    """
    node, line = doc, None
    for step in loc:
        lc = getattr(node, "lc", None)
        try:
            if lc is not None:
                line = (lc.key(step) if isinstance(step, str) else lc.item(step))[0] + 1
            node = node[step]
        except (KeyError, IndexError, TypeError):
            break
    return line


class TelemetryError(RheostatError):
    """A telemetry message was rejected; `reason` is the metric label it is counted under."""

    REASONS = (
        "malformed",
        "too_large",
        "wrong_version",
        "wrong_length",
        "non_finite",
        "out_of_range",
        "unknown_rack",
        "stale_sequence",
        "clock_skew",
        "internal_error",
    )

    def __init__(self, reason: str, message: str, *, rack: str | None = None) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown telemetry rejection reason {reason!r}")
        self.reason = reason
        self.rack = rack
        self.message = message
        prefix = f"rack {rack}: " if rack else ""
        super().__init__(f"{prefix}{reason}: {message}")


class ProtocolError(RheostatError):
    """A command, status or other message does not follow wire protocol v1.

    `reason` is the label it is counted under (for commands, the agents' rejection reasons).
    """

    def __init__(self, message: str, *, rack: str | None = None, reason: str = "malformed") -> None:
        self.rack = rack
        self.reason = reason
        self.message = message
        super().__init__(f"rack {rack}: {message}" if rack else message)


class TopologyError(RheostatError):
    """The topology arrays are inconsistent (a GPU points at a missing server, a bad limit)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class PolicyError(RheostatError):
    """The decision core was asked something it cannot answer (inputs of the wrong shape)."""
