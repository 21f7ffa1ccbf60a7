"""Policy files: every error with file, line and field; the shipped policies load."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from controller.policy_file import default_policy_text, load_policy, parse_policy
from policies.errors import ConfigError, ConfigErrors

ROOT = Path(__file__).resolve().parents[2]

BAD = """\
site:
  name: dc1
  topology:
    generate: {gpus: 13}
control:
  tick_period_s: -1
  bogus: 3
mqtt:
  port: 99999
  protocol: "4"
"""

GEN = "site: {name: a, topology: {generate: {gpus: 8}}}\n"


def test_example_and_default_policies_load() -> None:
    example = load_policy(ROOT / "deploy" / "policy.example.yaml")
    assert example.topology.n_racks == 2
    assert example.topology.n_gpus == 56
    # breaker rating x derating: the usable limit the allocator is held to
    assert example.topology.racks.usable_w.tolist() == [32000.0, 24000.0]
    assert example.config.tiers.classes["inference"] == 0
    default = parse_policy(default_policy_text(), source="<default>")
    assert default.config.mqtt.protocol == "3.1.1"  # the embedded demo broker speaks 3.1.1


def test_every_error_is_reported_with_its_line_and_field() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_policy(BAD, source="bad.yaml")
    found = {(e.line, e.field) for e in info.value.errors}
    assert found == {
        (4, "site.topology.generate"),
        (6, "control.tick_period_s"),
        (7, "control.bogus"),
        (9, "mqtt.port"),
        (10, "mqtt.protocol"),
    }
    assert all(e.file == "bad.yaml" for e in info.value.errors)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("site: {name: a, topology: {}}", "site.topology"),
        (
            GEN + "mqtt: {password_env: A, password_file: b}",
            "mqtt",
        ),
        (
            GEN + "control: {command_ttl_s: 1}",
            "control",
        ),
        (
            GEN + "tiers: {classes: {x: 4}}",
            "tiers.classes.x",
        ),
    ],
)
def test_cross_field_rules(text: str, field: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_policy(text, source="p.yaml")
    assert [e.field for e in info.value.errors] == [field]


def test_yaml_syntax_error_has_a_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy("site:\n  name: [unclosed\n", source="s.yaml")
    assert info.value.line is not None
    assert "not valid YAML" in str(info.value)


def test_inventory_file_is_resolved_next_to_the_policy(tmp_path: Path) -> None:
    (tmp_path / "inv.yaml").write_text(
        "rows:\n  - id: row0\n    racks:\n      - id: ra\n        breaker_w: 20000\n"
        "        servers: [{model: A100-SXM4, gpus: 4}, {model: H100-SXM5}]\n"
    )
    (tmp_path / "p.yaml").write_text("site: {name: s, topology: {inventory: inv.yaml}}\n")
    policy = load_policy(tmp_path / "p.yaml")
    assert policy.topology.n_gpus == 12
    assert policy.topology.racks.ids == ("ra",)
    (tmp_path / "inv.yaml").write_text("rows:\n  - id: row0\n    racks: []\n")
    with pytest.raises(ConfigErrors) as info:
        load_policy(tmp_path / "p.yaml")
    assert info.value.errors[0].file == str(tmp_path / "inv.yaml")
    assert info.value.errors[0].line == 3


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ROOT / "deploy" / "policy.example.yaml")]) == 0
    assert "56 GPUs in 2 racks" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:6: control.tick_period_s:" in err
    assert "5 error(s)" in err


def test_schema_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "policy"]) == 0
    out = capsys.readouterr().out
    assert '"PolicyFile"' in out or '"title": "PolicyFile"' in out
    assert '"tick_period_s"' in out


def test_psu_efficiency_scales_every_rating_to_the_core_side() -> None:
    text = (
        "site: {name: a, topology: {generate: {gpus: 64, racks_per_row: 1}}}\n"
        "limits: {contract_w: 100000, rack_breaker_w: 40000, psu_efficiency: 0.95}\n"
    )
    wall = parse_policy(text.replace(", psu_efficiency: 0.95", ""), source="t").topology
    dc = parse_policy(text, source="t").topology
    for lw, ld in zip(wall.levels, dc.levels, strict=True):
        assert ld.limit_w == pytest.approx(lw.limit_w * 0.95)
    assert dc.levels[-1].limit_w[0] == pytest.approx(95_000.0)
    with pytest.raises(ConfigErrors) as info:
        parse_policy(text.replace("0.95", "0.3"), source="t")
    assert "limits.psu_efficiency" in str(info.value)


def test_measured_non_gpu_power_is_opt_in_and_reads_meters_with_the_psu_efficiency() -> None:
    base = "site: {name: a, topology: {generate: {gpus: 8}}}\nlimits: {psu_efficiency: 0.94}\n"
    off = parse_policy(base, source="t").config.policy_settings().capping.non_gpu
    assert not off.measured
    text = base + "capping: {non_gpu: {measured: true, margin_frac: 0.1, hold_s: 30}}\n"
    on = parse_policy(text, source="t").config.policy_settings().capping.non_gpu
    assert (on.measured, on.margin_frac, on.hold_s) == (True, 0.1, 30.0)
    assert on.psu_efficiency == pytest.approx(0.94)
    with pytest.raises(ConfigErrors) as info:
        parse_policy(base + "capping: {non_gpu: {margin_frac: 2}}\n", source="t")
    assert "capping.non_gpu.margin_frac" in str(info.value)
