from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from controller.cli import GROUP, commands, load, main
from policies.errors import ConfigError, ConfigErrors, TelemetryError

ROOT = Path(__file__).resolve().parents[2]


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


def test_every_registered_command_is_listed_and_registers_its_own_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The installed entry points are pyproject's (a stale install would miss some), each loads,
    and each adds exactly the subcommand it is named for; `rheostat --help` lists them all."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    group = declared[GROUP]
    installed = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    assert installed == group, "reinstall the package (make install) to register its commands"
    for ep in commands():
        register = load(ep)
        assert register is not None, ep.name
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        register(sub)
        assert list(sub.choices) == [ep.name]
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    for name in group:
        assert f"\n    {name} " in listed or f"\n    {name}\n" in listed, name


def test_the_daemons_commands_do_not_load_the_simulator_or_the_benchmarks() -> None:
    """Building the daemon's own subcommands imports neither package layered above it."""
    code = (
        "import sys, argparse\n"
        "from controller.cli import commands, load\n"
        "sub = argparse.ArgumentParser().add_subparsers()\n"
        "for ep in commands():\n"
        "    if ep.module.startswith('controller.'):\n"
        "        load(ep)(sub)\n"
        "loaded = {m.split('.')[0] for m in sys.modules} & {'simulator', 'bench', 'agent'}\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_every_benchmark_module_is_registered_under_its_name() -> None:
    """A module under bench/ that names itself a benchmark is listed in the registry, once."""
    from bench import _registry

    named = {}
    for path in sorted((ROOT / "bench").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["NAME"]
                and isinstance(node.value, ast.Constant)
            ):
                named[node.value.value] = f"bench.{path.stem}"
    assert named == _registry.BENCHMARKS
