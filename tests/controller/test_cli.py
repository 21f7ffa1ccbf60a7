from __future__ import annotations

import subprocess
import sys

import pytest

from controller.cli import main
from policies.errors import ConfigError, ConfigErrors, TelemetryError


def test_help_lists_only_working_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "usage: rheostat" in capsys.readouterr().out


def test_version_runs_as_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controller", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("rheostat ")


def test_config_error_names_file_line_and_field() -> None:
    err = ConfigError("must be > 0", file="policy.yaml", line=12, field="limits.site_w")
    assert str(err) == "policy.yaml:12: limits.site_w: must be > 0"
    many = ConfigErrors([err, ConfigError("unknown key", file="policy.yaml", line=3, field="x")])
    assert str(many).splitlines() == [
        "policy.yaml:12: limits.site_w: must be > 0",
        "policy.yaml:3: x: unknown key",
    ]


def test_telemetry_error_reasons_are_closed() -> None:
    with pytest.raises(ValueError, match="unknown telemetry rejection reason"):
        TelemetryError("bored", "x")
    assert TelemetryError("malformed", "x", rack="r1").rack == "r1"
