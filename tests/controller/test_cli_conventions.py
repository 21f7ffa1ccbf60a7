"""One convention across commands: file arguments, durations, schemas and `check`'s advice."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest

from controller.cli import main
from controller.commands import _advice
from controller.commands._args import duration_s
from controller.commands._text import flatten, human
from tests.policies.test_pol_decide_cli import snapshot, write

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "policy.example.yaml"


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (model.property, schema) pair in a JSON schema, nested definitions included."""
    found = []
    models = [("root", schema), *schema.get("$defs", {}).items()]
    for name, model in models:
        for prop, spec in model.get("properties", {}).items():
            found.append((f"{name}.{prop}", spec))
    return found


def test_policy_schema_describes_every_property(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "policy"]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    properties = _properties(schema)
    assert len(properties) > 130
    missing = [name for name, spec in properties if not spec.get("description", "").strip()]
    assert missing == []


def test_snapshot_schema_describes_every_property(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "snapshot"]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"topology", "telemetry", "limits"} <= set(schema["properties"])
    properties = _properties(schema)
    # The snapshot's own models and the decision settings it shares with the policy file.
    assert {"LevelSpec.limit_w", "TelemetrySpec.mem_util", "CappingSection.deadband_w"} <= {
        name for name, _ in properties
    }
    missing = [name for name, spec in properties if not spec.get("description", "").strip()]
    assert missing == []


def test_check_suggests_close_field_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "site: {name: a, topology: {generate: {gpus: 8}}}\n"
        "capping:\n  deadband: 5\n"
        "mqtt: {pasword: x}\n"
        "zzz_unrelated: 1\n"
    )
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: capping.deadband: " in err
    assert "(did you mean capping.deadband_w?)" in err
    assert "(did you mean mqtt.password?)" in err
    assert "zzz_unrelated: Extra inputs are not permitted\n" in err
    # a known field with a bad value gets no suggestion; list indices are looked through
    assert _advice.suggestion("capping.deadband_w") is None
    assert _advice.suggestion("site.topology.rows[0].racks[1].breaker") == (
        "did you mean site.topology.rows[0].racks[1].breaker_w?"
    )


def test_check_warns_on_inline_and_deprecated_passwords(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("site: {name: a, topology: {generate: {gpus: 8}}}\nmqtt: {password: hunter2}\n")
    assert main(["check", "--policy", str(path)]) == 0
    captured = capsys.readouterr()
    assert f"{path}: warning: mqtt.password: " in captured.err
    assert "hunter2" not in captured.err + captured.out
    path.write_text("site: {name: a, topology: {generate: {gpus: 8}}}\nmqtt: {password_env: X}\n")
    assert main(["check", str(path)]) == 0
    assert "mqtt.password_env: deprecated" in capsys.readouterr().err
    assert main(["check", str(EXAMPLE)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_file_arguments_old_spellings_still_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = write(tmp_path, snapshot())
    assert main(["decide", str(snap), "--json"]) == 0
    new = orjson.loads(capsys.readouterr().out)
    assert main(["decide", "--snapshot", str(snap), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == new
    with pytest.raises(SystemExit):
        main(["decide", str(snap), "--snapshot", str(snap)])
    assert "give the file once" in capsys.readouterr().err
    for argv in (["check", "--policy", str(EXAMPLE)], ["check", "--config", str(EXAMPLE)]):
        assert main(argv) == 0
    capsys.readouterr()


@pytest.mark.parametrize("command", ["run", "events", "check", "simulate"])
def test_help_names_the_policy_file_one_way(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--policy FILE" in out
    assert "--config" not in out


def test_run_without_a_policy_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2
    assert "--policy FILE is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("2m", 120.0), ("1.5h", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "2 minutes", "1e3", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_s(text)


def test_human_text_has_no_reprs() -> None:
    rows = dict(
        flatten({"a": None, "b": {"x": 1.0, "y": [1, 2]}, "c": [], "d": [{"e": True}], "f": {}})
    )
    assert rows == {"a": "-", "b.x": "1", "b.y": "1, 2", "c": "none", "d[0].e": "yes", "f": "none"}
    assert human(1234567.0) == "1,234,567"
