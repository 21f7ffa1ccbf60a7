"""`rheostat bench control`: one JSON object of summaries, one readable table, honest verdicts."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import orjson
import pytest

from bench import control
from controller.cli import main

#: The keys of `rheostat simulate --json` every scoreboard summary must carry.
SIMULATE_KEYS = {
    "scenario",
    "controller",
    "breaker_trips",
    "seconds_over_limit",
    "max_overshoot_pct",
    "time_to_cap_s",
    "throughput_retained",
    "energy_kwh",
    "realtime_factor",
    "dr",
    "oracle_ratio",
    "seconds_below_floor",
}
SCOREBOARD_KEYS = {
    "breaker_over_s",
    "breaker_over_allowed_s",
    "site_over_s",
    "site_over_allowed_s",
    "ramp_over_s",
    "within_limits",
    "to_cap_ticks",
    "step_announced",
    "steady_gap_pct",
    "steady_gap_vs_uncapped_pct",
    "steady_gap_parts_pct",
}


@pytest.fixture(scope="module")
def budget_step() -> dict[str, Any]:
    """budget-step cut to 700 s (the 30 % step lands at 600 s) under all four controllers."""
    parser = _parser()
    args = parser.parse_args(["--scenario", "budget-step", "--duration", "700"])
    (row,) = control.run(args)
    return row


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    control.add_arguments(parser)
    return parser


def test_json_is_scenarios_of_controllers_of_summaries(budget_step: dict[str, Any]) -> None:
    assert list(budget_step) == ["scenarios"]
    by_controller = budget_step["scenarios"]["budget-step"]
    assert list(by_controller) == list(control.CONTROLLERS)
    for name, summary in by_controller.items():
        assert summary["controller"] == name
        assert set(summary) >= SIMULATE_KEYS | {"scoreboard"}
        assert set(summary["scoreboard"]) == SCOREBOARD_KEYS
    orjson.dumps(budget_step)  # plain JSON types only


def test_the_step_is_scored_and_rheostat_meets_the_safety_targets(
    budget_step: dict[str, Any],
) -> None:
    runs = budget_step["scenarios"]["budget-step"]
    ours = runs["rheostat"]
    assert ours["breaker_trips"] == 0
    assert ours["scoreboard"]["breaker_over_s"] == 0.0
    (ticks,) = ours["scoreboard"]["to_cap_ticks"]
    assert ticks is not None
    # Unannounced: the controller learns the new limit when it applies, and caps need two
    # decision periods (a period and the actuation lag) to land.
    assert ours["scoreboard"]["step_announced"] == [False]
    assert 0 < ticks <= control.MAX_UNANNOUNCED_TICKS
    assert ours["scoreboard"]["within_limits"] is True
    # Uncapped, the fleet sits over the new limit for most of the 100 s after the step.
    assert runs["none"]["scoreboard"]["site_over_s"] >= 50.0
    assert runs["none"]["scoreboard"]["within_limits"] is False
    # One unannounced step: the site may be over its new limit for at most 2 decision periods.
    assert ours["scoreboard"]["site_over_allowed_s"] == 2.0
    # Demand exceeds the stepped limit, so the steady-state gap is measured.
    assert ours["scoreboard"]["steady_gap_pct"] is not None


def test_the_steady_gap_is_split_by_where_the_unused_power_lies(
    budget_step: dict[str, Any],
) -> None:
    board = budget_step["scenarios"]["budget-step"]["rheostat"]["scoreboard"]
    split = dict(board["steady_gap_parts_pct"])
    # After the cut the site limit binds throughout: the split covers the whole gap.
    assert split.pop("site_bound") == 1.0
    assert split.pop("gap") == pytest.approx(board["steady_gap_pct"], abs=1e-3)
    parts = split
    assert list(parts) == ["sync", "service", "idle", "non_gpu", "rest"]
    assert sum(parts.values()) == pytest.approx(board["steady_gap_pct"], abs=0.01)
    # budget-step's servers draw their non-GPU peak whatever their load (non_gpu_idle_frac 1).
    assert parts["non_gpu"] == 0.0
    # After the cut, demand exceeds the limit; still, the training jobs' communication phases,
    # the chat service between bursts and the 32 GPUs without a job (at their min caps, over
    # their idle draw) leave power under their caps.
    assert parts["sync"] > 0.5
    assert parts["service"] > 0.1
    assert parts["idle"] > 0.5


def test_table_has_one_row_per_scenario_and_controller(budget_step: dict[str, Any]) -> None:
    text = control.table([budget_step])
    lines = text.splitlines()
    assert len(lines) == 2 + len(control.CONTROLLERS)
    assert lines[0].split()[:2] == ["scenario", "controller"]
    assert "targets" in lines[0]
    assert {"oracle", "o0", "o3", "below_floor_s"} <= set(lines[0].split())
    ours = next(r for r in control.flat_rows([budget_step]) if r["controller"] == "rheostat")
    # No controller beats the oracle's weighted work (it bounds every allocation).
    assert 0.0 < ours["oracle"] <= 1.0 + 1e-3
    assert [line.split()[1] for line in lines[2:]] == list(control.CONTROLLERS)


def test_misses_name_each_target_missed(budget_step: dict[str, Any]) -> None:
    runs = copy.deepcopy(budget_step["scenarios"]["budget-step"])
    for rival in ("static", "threshold"):
        runs[rival]["scoreboard"]["within_limits"] = True
    ours = runs["rheostat"]
    ours["breaker_trips"] = 1
    ours["scoreboard"]["breaker_over_s"] = 2.0
    ours["scoreboard"]["to_cap_ticks"] = [4.0]
    ours["scoreboard"]["steady_gap_pct"] = 1.5
    ours["throughput_retained"]["tier0"] = 0.99
    ours["throughput_retained"]["weighted"] = 0.0
    ours["oracle_ratio"] = {"weighted": control.MIN_ORACLE_RATIO - 0.01}
    missed = control.misses("oversubscribed", runs)
    assert missed == [
        "trips",
        "breaker-over",
        "to-cap",
        "steady-gap",
        "<static",
        "<threshold",
        "<static+5",
        "tier0",
        "oracle",
    ]
    ours["scoreboard"]["site_over_s"] = 2.5
    ours["scoreboard"]["ramp_over_s"] = 1.0
    assert control.misses("budget-step", runs)[3:5] == ["site-over", "ramp-over"]
    ours["scoreboard"] = _clean_board()
    ours["breaker_trips"] = 0
    ours["throughput_retained"] = {"tier0": 1.0, "weighted": 1.0}
    ours["oracle_ratio"] = {"weighted": control.MIN_ORACLE_RATIO}
    assert control.misses("budget-step", runs) == []


def test_an_announced_step_must_be_met_on_time(budget_step: dict[str, Any]) -> None:
    runs = copy.deepcopy(budget_step["scenarios"]["budget-step"])
    ours = runs["rheostat"]
    ours["scoreboard"] = _clean_board() | {"to_cap_ticks": [1.0], "step_announced": [True]}
    ours["throughput_retained"] = {"tier0": 1.0, "weighted": 1.0}
    assert control.misses("budget-step", runs) == ["to-cap"]
    ours["scoreboard"]["to_cap_ticks"] = [0.0]
    assert control.misses("budget-step", runs) == []


def _clean_board() -> dict[str, Any]:
    return {
        "breaker_over_s": 0.0,
        "site_over_s": 0.0,
        "site_over_allowed_s": 2.0,
        "ramp_over_s": 0.0,
        "within_limits": True,
        "to_cap_ticks": [1.0],
        "steady_gap_pct": 0.5,
    }


def test_a_rival_over_the_limits_is_shown_but_not_compared(budget_step: dict[str, Any]) -> None:
    runs = copy.deepcopy(budget_step["scenarios"]["budget-step"])
    runs["rheostat"]["scoreboard"] = _clean_board()
    runs["rheostat"]["throughput_retained"] = {"tier0": 1.0, "weighted": 0.80}
    runs["static"]["throughput_retained"]["weighted"] = 0.90
    runs["threshold"]["throughput_retained"]["weighted"] = 0.70
    runs["static"]["scoreboard"]["within_limits"] = True
    runs["threshold"]["scoreboard"]["within_limits"] = True
    assert control.misses("budget-step", runs) == ["<static"]
    # The same static run, but it took its throughput over the site limit: no longer a rival.
    runs["static"]["scoreboard"]["site_over_s"] = 250.0
    runs["static"]["scoreboard"]["within_limits"] = False
    assert control.misses("budget-step", runs) == []
    assert control.misses("oversubscribed", runs) == []
    row = {"scenarios": {"budget-step": runs}}
    verdicts = {r["controller"]: r["targets"] for r in control.flat_rows([row])}
    assert verdicts["static"] == "over limits, not compared"
    assert verdicts["threshold"] == ""
    assert verdicts["rheostat"] == "ok"
    assert {r["site_over_s"] for r in control.flat_rows([row]) if r["controller"] == "static"} == {
        250.0
    }


def test_work_targets_replace_the_throughput_comparison(budget_step: dict[str, Any]) -> None:
    """With a carbon policy, Rheostat does the work owed and no more: targets met is the test."""
    runs = copy.deepcopy(budget_step["scenarios"]["budget-step"])
    ours = runs["rheostat"]
    ours["scoreboard"] = _clean_board()
    ours["throughput_retained"] = {"tier0": 1.0, "weighted": 0.5}
    ours["work_targets"] = [{"job": "sweep", "met": True}]
    assert control.misses("carbon-shift", runs) == []
    row = {"scenarios": {"carbon-shift": runs}}
    (verdict,) = (r["targets"] for r in control.flat_rows([row]) if r["controller"] == "rheostat")
    assert verdict == "ok (work targets met)"
    ours["work_targets"].append({"job": "finetune", "met": False})
    assert control.misses("carbon-shift", runs) == ["work-target"]


def test_cli_prints_the_object_unwrapped(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "control", "--json", "--scenario", "steady", "--duration", "30"]
    assert main([*argv, "--controller", "static", "rheostat"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert list(doc) == ["scenarios"]
    assert list(doc["scenarios"]["steady"]) == ["static", "rheostat"]
    assert main(["bench", "control", "--scenario", "steady", "--duration", "30"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 + len(control.CONTROLLERS)


def test_faults_add_each_scenario_again_under_faults() -> None:
    args = _parser().parse_args(
        ["--scenario", "steady", "--duration", "200", "--controller", "rheostat", "--faults"]
    )
    (row,) = control.run(args)
    assert list(row["scenarios"]) == ["steady", "steady+faults"]
    faulty = row["scenarios"]["steady+faults"]["rheostat"]
    assert faulty["breaker_trips"] == 0
    assert faulty["scoreboard"]["breaker_over_s"] == 0.0
    assert faulty["scoreboard"]["within_limits"] is True
    # The outage outlived the commands' TTL, so racks ran on their safe caps a while.
    clean = row["scenarios"]["steady"]["rheostat"]
    assert faulty["energy_kwh"] != clean["energy_kwh"]
