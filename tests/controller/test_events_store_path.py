"""`rheostat events --policy` finds the event store where the daemon writes it.

Under the shipped systemd unit the daemon resolves a relative `store_path` under
`$STATE_DIRECTORY` (/var/lib/rheostat), which an operator's shell does not have; the command must
still find the store there, and take an explicit `--state-dir`.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from controller.cli import main
from controller.commands.events import store_path_from_policy
from controller.config import DemandResponseSection
from controller.grid.store import EventStore
from policies.dr.events import DrEvent

T0 = 1.7e9
STORE = DemandResponseSection().store_path  # the shipped default, relative


@pytest.fixture(autouse=True)
def _shell_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's shell: no state directory, no overrides of the store path."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("RHEOSTAT_DEMAND_RESPONSE__STORE_PATH", raising=False)
    monkeypatch.delenv("RHEOSTAT_DEMAND_RESPONSE", raising=False)


def _policy(tmp_path: Path, store_path: str | None = None) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    path = etc / "policy.yaml"
    section = {} if store_path is None else {"store_path": store_path}
    path.write_bytes(orjson.dumps({"site": {"name": "s"}, "demand_response": section}))
    return path


def _store(directory: Path, event_id: str, name: Path = STORE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    event = DrEvent(
        event_id=event_id,
        source="test",
        notified_s=T0,
        start_s=T0 + 60,
        duration_s=600.0,
        reduction_frac=0.1,
    )
    EventStore(directory / name).put(event, "")
    return directory / name


def _listed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["events", *argv, "--json"]) == 0
    return [row["event_id"] for row in orjson.loads(capsys.readouterr().out)]


def test_from_a_shell_the_units_state_directory_is_found(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    unit_state = tmp_path / "var-lib-rheostat"
    # Nothing under the unit's directory yet: beside the policy file, as the daemon would
    # without a state directory.
    assert store_path_from_policy(policy, unit_state_dir=unit_state) == policy.parent / STORE
    written = _store(unit_state, "under-unit")
    assert store_path_from_policy(policy, unit_state_dir=unit_state) == written
    # An explicit state directory wins; an absolute store path is taken as it is.
    other = tmp_path / "other"
    assert store_path_from_policy(policy, other, unit_state_dir=unit_state) == other / STORE
    absolute = _policy(tmp_path, str(tmp_path / "abs.sqlite"))
    assert store_path_from_policy(absolute, other, unit_state_dir=unit_state) == (
        tmp_path / "abs.sqlite"
    )


def test_state_dir_option_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path)
    _store(tmp_path / "state-a", "a")
    _store(tmp_path / "state-b", "b")
    _store(policy.parent, "beside")
    assert _listed(["--policy", str(policy), "--state-dir", str(tmp_path / "state-a")], capsys) == [
        "a"
    ]
    # Inside the unit (or the pod) the daemon's own variable decides; --state-dir still wins.
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state-b"))
    assert _listed(["--policy", str(policy)], capsys) == ["b"]
    assert _listed(["--policy", str(policy), "--state-dir", str(tmp_path / "state-a")], capsys) == [
        "a"
    ]
    # A store path overridden in the environment is the daemon's too.
    monkeypatch.delenv("STATE_DIRECTORY")
    _store(policy.parent, "overridden", Path("other.sqlite"))
    monkeypatch.setenv("RHEOSTAT_DEMAND_RESPONSE__STORE_PATH", "other.sqlite")
    assert _listed(["--policy", str(policy)], capsys) == ["overridden"]


def test_state_dir_needs_a_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path, "e")
    with pytest.raises(SystemExit) as info:
        main(["events", "--store", str(store), "--state-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "--state-dir goes with --policy FILE" in capsys.readouterr().err
