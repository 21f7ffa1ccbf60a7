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
from policies.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("agent", "controller", "policies", "simulator")
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


def test_bench_from_a_checkout_runs_anywhere(tmp_path: Path) -> None:
    """The console script of an editable install finds the checkout's benchmarks from any
    directory, and `bench simulate` offers every controller the simulator has."""
    script = Path(sys.executable).parent / "rheostat"
    out = subprocess.run(
        [str(script), "bench", "simulate", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "{rheostat,static,threshold,none}" in out.stdout


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("amqtt", ["demo", "--racks", "1", "--duration", "1", "--metrics-port", "0"], "demo"),
        ("matplotlib", ["simulate", "steady", "--report", "r"], "sim"),
    ],
)
def test_a_missing_extra_is_named_before_work_starts(
    tmp_path: Path, blocked: str, argv: list[str], extra: str
) -> None:
    """What an install without the extra sees: one line naming it, exit status 2, no traceback."""
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        "from controller.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 2, out.stderr
    assert f"pip install 'rheostat[{extra}]'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()  # nothing ran


def test_openadr_without_its_extra_fails_at_start(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "sys.modules['openleadr'] = None\n"
        "from controller.config import DemandResponseSection\n"
        "from controller.grid.hook import GridHook\n"
        "section = DemandResponseSection.model_validate(\n"
        "    {'openadr': {'vtn_url': 'http://127.0.0.1:1/', 'ven_name': 'v'}})\n"
        "GridHook(section, site='s', clock=time.time, base_dir=__import__('pathlib').Path('.'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode != 0
    assert "pip install 'rheostat[openadr]'" in out.stderr
