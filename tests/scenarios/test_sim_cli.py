"""`rheostat simulate` end to end: JSON summary, report files, errors, the scenario schema."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from controller.cli import main
from simulator.report import PLOTS
from simulator.scenario import Scenario


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


def test_report_writes_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(
        ["simulate", "steady", "--duration", "120", "--controller", "static", "--report", str(out)]
    )
    assert code == 0
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["controller"] == "static"
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert len(data) > 10_000


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
