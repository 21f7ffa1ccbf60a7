"""Packaging: the wheel's contents, declared dependencies and the extras' clear errors."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from controller import extras
from controller.cli import main
from policies.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("controller", "policies", "simulator")
#: Imported only where present (the benchmarks live in the source tree, not the wheel).
SOURCE_ONLY = {"bench"}


def _dist_name(requirement: str) -> str:
    name = requirement
    for stop in "<>=!~[; ":
        name = name.split(stop, 1)[0]
    return name.strip().lower().replace("_", "-").replace(".", "-")


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported by the shipped packages -> importing files."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".", 1)[0]
                    if top not in stdlib | SOURCE_ONLY and top not in PACKAGES:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared_with_bounds() -> None:
    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    shipped = [*project["dependencies"], *(r for k, v in optional.items() if k != "dev" for r in v)]
    for requirement in shipped:
        assert ">=" in requirement, requirement
        assert "<" in requirement, requirement
    declared = {_dist_name(r) for r in shipped}
    dists = packages_distributions()
    for module, files in _third_party_imports().items():
        names = {_dist_name(d) for d in dists.get(module, [module])}
        assert names & declared, f"{module} (imported by {sorted(files)}) is not declared"


def test_optional_packages_are_extras_not_base() -> None:
    base = {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = PYPROJECT["project"]["optional-dependencies"]
    for module, (extra, dist) in extras.EXTRAS.items():
        assert dist not in base, module
        assert dist in {_dist_name(r) for r in optional[extra]}, (module, extra)


def test_optional_imports_are_lazy() -> None:
    """The daemon's modules import with none of the extras' packages loaded."""
    code = (
        "import sys, controller.service, controller.daemon, controller.cli\n"
        "import controller.grid.hook, controller.grid.openadr\n"
        "heavy = {'amqtt', 'matplotlib', 'openleadr', 'pynvml'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_extra_names_it() -> None:
    extras.EXTRAS["no_such_module_here"] = ("sim", "no-such-dist")
    try:
        with pytest.raises(ConfigError, match=r"pip install 'rheostat\[sim\]'"):
            extras.require("no_such_module_here.sub", "the report")
    finally:
        del extras.EXTRAS["no_such_module_here"]


def test_wheel_leaves_bench_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "results", "*.egg-info")
    for name in (*PACKAGES, "bench"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        check=True,
        cwd=src,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rheostat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {*PACKAGES, next(t for t in tops if t.endswith(".dist-info"))}
    assert "controller/default_policy.yaml" in names
    assert any(n.startswith("simulator/scenarios/") for n in names)


def test_bench_outside_a_checkout_says_where_to_run(tmp_path: Path) -> None:
    """Run as an installed package from elsewhere: `bench` is not importable."""
    code = (
        "import sys\n"
        "sys.modules['bench'] = None\n"  # what an install without bench/ sees
        "from controller.cli import main\n"
        "sys.exit(main(['bench', 'simulate']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert "source checkout" in out.stderr


def test_bench_in_a_checkout_offers_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "simulate", "--help"])
    assert "threshold" in capsys.readouterr().out
