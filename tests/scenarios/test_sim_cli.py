"""`rheostat simulate` end to end: JSON summary, report files, errors, the scenario schema."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from controller.cli import main
from simulator import loop
from simulator.commands.simulate import CONTROLLERS, ProgressLine
from simulator.scenario import Scenario, shipped_scenarios


def test_simulate_prints_the_summary_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "budget-step", "--duration", "660", "--json"])
    assert code == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["scenario"] == "budget-step"
    assert summary["controller"] == "rheostat"
    assert isinstance(summary["breaker_trips"], int)
    assert set(summary["seconds_over_limit"]) >= {"server", "rack", "row", "site"}
    assert len(summary["time_to_cap_s"]) == 1
    assert summary["throughput_retained"]["tier0"] >= 0.99
    assert summary["realtime_factor"] > 1.0
    assert summary["dr"] == []


def test_table_is_text_and_progress_shows_through_a_pipe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "steady", "--duration", "1m", "--controller", "threshold"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "steady under threshold"
    rows = dict(line.split(None, 1) for line in lines[1:])
    assert rows["duration_s"] == "60"
    assert rows["seconds_over_limit.rack"] == "0"
    assert rows["carbon_kg"] == "-"
    assert rows["dr"] == "none"
    assert not any(c in captured.out for c in "{}[]\"'")  # no JSON or Python reprs
    # stderr is not a terminal here: plain progress lines, one per finished run at least
    assert "reference (unlimited): 100%" in captured.err.splitlines()
    assert "steady under threshold: 100%" in captured.err.splitlines()
    assert "\r" not in captured.err


def test_help_lists_every_shipped_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in shipped_scenarios():
        assert name in text
    assert len(shipped_scenarios()) >= 8
    assert CONTROLLERS == loop.CONTROLLERS


def test_bad_scenario_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nduration_s: 10\ntopology: {gpus: 16}\ntick_s: 0\n")
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: tick_s" in err


def test_scenario_schema_lists_every_section() -> None:
    schema = Scenario.model_json_schema()
    assert {"topology", "workloads", "limits", "grid", "faults", "physics"} <= set(
        schema["properties"]
    )
    assert set(schema["required"]) == {"name", "duration_s", "topology"}


def test_plain_progress_is_periodic() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = ProgressLine(out, clock=lambda: now[0])
    update = bar.task("run")
    for k in range(1, 100):
        now[0] = k * 0.5  # a call every half second of wall time, 49.5 s in all
        update(k / 100)
    update(1.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # one per PLAIN_PROGRESS_PERIOD_S, plus the finish
    assert lines[0] == "run:  10%"
    assert lines[-1] == "run: 100%"
