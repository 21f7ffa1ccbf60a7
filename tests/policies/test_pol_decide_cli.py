"""`rheostat decide --snapshot`: caps and budgets printed; bad snapshots name the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from controller.cli import main
from policies.decision import CappingSettings

MARGIN = CappingSettings().site_margin_frac


def snapshot() -> dict[str, Any]:
    return {
        "version": 1,
        "now_s": 100.0,
        "topology": {
            "site": "lab",
            "levels": [
                {
                    "name": "server",
                    "ids": ["s0", "s1"],
                    "parent": [0, 1],
                    "limit_w": [None, None],
                    "overhead_w": [300.0, 300.0],
                },
                {
                    "name": "rack",
                    "ids": ["r0", "r1"],
                    "parent": [0, 0],
                    "limit_w": [2000.0, 2000.0],
                    "derating": [0.8, 0.8],
                },
                {"name": "site", "ids": ["lab"], "limit_w": [2600.0]},
            ],
            "gpus": {
                "model": ["H100-SXM5", "H100-SXM5", "A100-SXM4", "A100-SXM4"],
                "server": [0, 0, 1, 1],
            },
        },
        "telemetry": {
            "power_w": [690.0, 650.0, 390.0, 120.0],
            "cap_w": [700.0, 700.0, 400.0, 400.0],
            "util": [0.95, 0.9, 0.2, 0.1],
            "mem_util": [0.4, 0.4, 0.8, 0.1],
        },
        "tier": [0, 2, 1, 3],
        "stale_racks": [],
        "limits": {"site_limit_w": 2400.0},
    }


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "snap.json"
    path.write_bytes(orjson.dumps(data))
    return path


def test_json_dry_run_reports_caps_clocks_and_budgets(tmp_path: Path, capsys) -> None:
    assert main(["decide", "--snapshot", str(write(tmp_path, snapshot())), "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    # The site limit less the default margin kept for limiter transients.
    assert out["site_allowed_w"] == pytest.approx(2400.0 * (1.0 - MARGIN))
    caps = [g["cap_w"] for g in out["gpus"]]
    assert len(caps) == 4
    rack0 = next(g for g in out["groups"] if g["id"] == "r0")
    assert rack0["limit_w"] == 1600.0
    assert rack0["budget_w"] <= 1600.0
    assert rack0["headroom_w"] == pytest.approx(1600.0 - rack0["budget_w"], abs=0.2)
    site = next(g for g in out["groups"] if g["level"] == "site")
    assert site["budget_w"] <= 2400.0 + 1e-6
    assert out["gpus"][2]["sm_clock_max_mhz"] < 1410  # memory-bound A100 is slowed
    server = next(g for g in out["groups"] if g["id"] == "s0")
    assert server["limit_w"] is None


def test_table_dry_run(tmp_path: Path, capsys) -> None:
    assert main(["decide", "--snapshot", str(write(tmp_path, snapshot()))]) == 0
    out = capsys.readouterr().out
    assert "sm_clock_max_mhz" in out
    assert "headroom_w" in out
    assert f"site_allowed_w={round(2400.0 * (1.0 - MARGIN), 1)}" in out


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("telemetry", "power_w"), [1.0], "telemetry.power_w"),
        (("telemetry", "util"), [0.1, 0.2, 1.5, 0.1], "telemetry.util.2"),
        (("tier",), [0, 1, 2, 7], "tier.3"),
        (("stale_racks",), ["r9"], "stale_racks.0"),
        (
            ("topology", "gpus", "model"),
            ["H100-SXM5", "B300", "A100-SXM4", "A100-SXM4"],
            "topology.gpus.model.1",
        ),
        (("topology", "levels", 1, "limit_w"), [2000.0], "topology.levels.1.limit_w"),
        (("limits",), {"site_limit_w": -5.0}, "limits.site_limit_w"),
        (("settings",), {"capping": {"deadband": 3.0}}, "settings.capping.deadband"),
        (("unexpected",), 1, "unexpected"),
        (("now_s",), float("nan"), "now_s"),
        (("topology", "levels", 0, "parent"), [0, 5], "topology.levels.0.parent"),
        (("topology", "gpus", "server"), [0, 0, 1, 7], "topology.gpus.server"),
        (("topology", "rack_level"), "pdu", "topology.rack_level"),
    ],
)
def test_bad_snapshot_names_the_field(tmp_path: Path, capsys, path, value, field) -> None:
    data = copy.deepcopy(snapshot())
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert main(["decide", "--snapshot", str(write(tmp_path, data))]) == 1
    err = capsys.readouterr().err
    assert f": {field}: " in err


def _bad(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(snapshot())
    target: Any = data
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else target[key]
    target[path[-1]] = value
    return data


#: Settings and inputs a snapshot shares with the policy file, bounded by the same model.
BOUNDED = [
    (("settings", "capping", "raise_rate_w_per_s"), -1000.0, "settings.capping.raise_rate_w_per_s"),
    (("settings", "capping", "site_margin_frac"), -0.5, "settings.capping.site_margin_frac"),
    (("settings", "capping", "deadband_w"), None, "settings.capping.deadband_w"),
    (("settings", "capping", "deadband_w"), -1.0, "settings.capping.deadband_w"),
    (("settings", "capping", "pinned_frac"), 2.0, "settings.capping.pinned_frac"),
    (("settings", "dvfs", "max_loss_frac"), 5.0, "settings.dvfs.max_loss_frac"),
    (("settings", "dvfs", "max_loss_frac"), None, "settings.dvfs.max_loss_frac"),
    (("settings", "dvfs", "memory_bound_ratio"), -1.0, "settings.dvfs.memory_bound_ratio"),
    (("settings", "dvfs", "enabled"), "maybe", "settings.dvfs.enabled"),
    (("settings", "ramp", "site_down_w_per_s"), -5.0, "settings.ramp.site_down_w_per_s"),
    (
        ("settings", "capping", "site_ramp_up_w_per_s"),
        10.0,
        "settings.capping.site_ramp_up_w_per_s",
    ),
    (("limits", "gpu_floor_w"), 5.0, "limits.gpu_floor_w"),
    (("limits", "site_target_w"), 0.0, "limits.site_target_w"),
    (("topology", "gpus", "model"), [], "topology.gpus.model"),
    (("topology", "gpus", "server"), [0, 0, 1, 2**40], "topology.gpus.server.3"),
    (("topology", "levels", 0, "parent"), [0, -1], "topology.levels.0.parent.1"),
    (("telemetry", "power_w"), [690.0, 650.0, 390.0, 1e300], "telemetry.power_w.3"),
    (
        ("previous",),
        {"cap_w": [700, 700, 400, -4], "now_s": 99.0, "site_allowed_w": 2400},
        "previous.cap_w.3",
    ),
]


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize(("path", "value", "field"), BOUNDED)
def test_out_of_bounds_settings_and_inputs_name_the_field(
    tmp_path: Path, capsys, *, path, value, field, as_json: bool
) -> None:
    snap = write(tmp_path, _bad(path, value))
    args = ["decide", "--snapshot", str(snap)] + (["--json"] if as_json else [])
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines
    assert all(line.startswith(f"{snap}: ") for line in lines)
    assert any(line.startswith(f"{snap}: {field}: ") for line in lines), lines


def test_a_policy_file_and_a_snapshot_take_the_same_settings(tmp_path: Path, capsys) -> None:
    """Each settings section of the policy file is accepted, with the same meaning, as a
    snapshot's: the dry run and the daemon decide alike."""
    from controller.policy_file import parse_policy

    settings = {
        "capping": {"deadband_w": 0.0, "raise_rate_w_per_s": 50.0, "site_margin_frac": 0.01},
        "ramp": {"site_down_w_per_s": 100.0},
        "dvfs": {"max_loss_frac": 0.3},
    }
    text = "site: {name: lab, topology: {generate: {gpus: 8}}}\n" + "".join(
        f"{name}: {orjson.dumps(section).decode()}\n" for name, section in settings.items()
    )
    policy = parse_policy(text, source="p").config.policy_settings()
    data = snapshot() | {"settings": settings}
    from controller.snapshot import parse_snapshot

    assert parse_snapshot(data).settings == policy


def test_a_site_without_any_limit_gives_every_gpu_its_demand(tmp_path: Path, capsys) -> None:
    data = snapshot()
    for level in data["topology"]["levels"]:
        level["limit_w"] = [None] * len(level["ids"])
    data["limits"] = {}
    assert main(["decide", "--snapshot", str(write(tmp_path, data)), "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert [g["cap_w"] for g in out["gpus"]] == [700.0, 700.0, 400.0, 400.0]
    assert all(g["cap_w"] >= g["demand_w"] for g in out["gpus"])
    assert out["site_allowed_w"] is None  # no limit: null in JSON
    assert out["infeasible_groups"] == 0


def test_previous_caps_outside_the_models_range_are_clamped(tmp_path: Path, capsys) -> None:
    data = snapshot()
    # An H100 kept at 705 W (inside the deadband of its 700 W max), an A100 at 700 W, and an
    # A100 below its idle power.
    data["previous"] = {"cap_w": [705.0, 600.0, 700.0, 20.0], "now_s": 99.0, "site_allowed_w": 2400}
    data["telemetry"]["util"] = [0.95, 0.9, 0.2, 0.0]
    data["telemetry"]["mem_util"] = [0.4, 0.4, 0.8, 0.0]
    data["stale_racks"] = ["r1"]
    assert main(["decide", "--snapshot", str(write(tmp_path, data)), "--json"]) == 0
    gpus = orjson.loads(capsys.readouterr().out)["gpus"]
    assert gpus[0]["cap_w"] <= 700.0
    assert 100.0 <= gpus[2]["cap_w"] <= 400.0
    assert 100.0 <= gpus[3]["cap_w"] <= 400.0
    assert all(isinstance(g["sm_clock_max_mhz"], int) for g in gpus)


def test_unreadable_and_malformed_files(tmp_path: Path, capsys) -> None:
    assert main(["decide", "--snapshot", str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["decide", "--snapshot", str(bad)]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_a_snapshot_may_name_synchronous_jobs(tmp_path: Path, capsys) -> None:
    def caps(data: dict[str, Any]) -> list[float]:
        assert main(["decide", "--snapshot", str(write(tmp_path, data)), "--json"]) == 0
        return [g["cap_w"] for g in orjson.loads(capsys.readouterr().out)["gpus"]]

    plain = caps(snapshot())
    data = snapshot()
    data["sync_job"] = ["train", "train", None, None]
    paced = caps(data)
    util = data["telemetry"]["util"]
    # The two H100s step together: the faster one is held to the pace of the other.
    pace = [(paced[i] - 80.0) / (620.0 * util[i]) for i in (0, 1)]
    assert paced[0] < plain[0] - 20.0
    assert pace[0] == pytest.approx(pace[1], abs=0.02)
    data["sync_job"] = ["train"]
    assert main(["decide", "--snapshot", str(write(tmp_path, data))]) == 1
    assert ": sync_job: " in capsys.readouterr().err
