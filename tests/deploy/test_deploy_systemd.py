"""deploy/systemd/rheostat.service: valid for systemd, and its sandbox lets the event store write.

systemd is not PID 1 on this machine (nor in most CI containers), so `systemd-run` cannot start
the unit. What runs instead: `systemd-analyze verify` and `systemd-analyze security --offline`
on the unit file, and the daemon's own event-store code inside a mount namespace built from the
unit's directives (`unshare`): every mount read-only (ProtectSystem=strict), private /tmp and
/var/tmp (PrivateTmp=yes), /var/lib/<StateDirectory> the one writable directory with
$STATE_DIRECTORY naming it, and no capabilities left. The store must land there; without the
state directory (the unit before it had one) it must fail to open. The uid stays 0 with every
capability dropped, because this interpreter lives under root's private home; systemd's
DynamicUser only changes who owns the directory it creates.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from controller.config import DemandResponseSection
from controller.settings import load_secrets
from tests.services import IN_CI, require_binary

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "rheostat.service"
ROOT = UNIT.parents[2]

# The daemon's path to its store: the demand-response hook with a default section (relative
# store_path) and the policy file's directory from the unit's ExecStart.
STORE_SNIPPET = """
import sys
from pathlib import Path
from controller.config import DemandResponseSection
from controller.grid.hook import GridHook
from policies.dr.events import DrEvent
hook = GridHook(DemandResponseSection(), site="s", clock=lambda: 1.0e9, base_dir=Path(sys.argv[1]))
event = DrEvent(event_id="e1", source="test", notified_s=1.0e9, start_s=1.0e9 + 60,
                duration_s=600.0, reduction_frac=0.1)
hook.events.store.put(event, "written in the sandbox")
print(hook.events.store.path)
"""


def directives() -> dict[str, list[str]]:
    """The unit's [Service] settings; a key set twice keeps both values, as systemd reads them."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    # verify also checks that ExecStart's program exists: point it at this venv's `rheostat`.
    rheostat = Path(sys.executable).with_name("rheostat")
    assert rheostat.exists()
    unit = tmp_path / "rheostat.service"
    unit.write_text(UNIT.read_text().replace("/opt/rheostat/venv/bin/rheostat", str(rheostat)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert security.returncode == 0, security.stderr
    for setting in ("PrivateTmp=", "ProtectSystem=", "NoNewPrivileges=", "UMask="):
        assert f"✓ {setting}" in security.stdout, setting


def test_the_unit_gives_the_store_a_state_directory() -> None:
    unit = directives()
    assert unit["DynamicUser"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["StateDirectory"] == ["rheostat"]
    # Nothing else hides or freezes the state directory again.
    for key in ("ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "ProtectHome"):
        for value in unit.get(key, []):
            assert "/var/lib" not in value, (key, value)
    # The shipped default store path is relative, so it goes under $STATE_DIRECTORY.
    assert not DemandResponseSection().store_path.is_absolute()


def test_the_broker_password_is_a_credential_the_controller_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LoadCredential=ID:PATH` puts PATH's content in `$CREDENTIALS_DIRECTORY/ID`: that file, laid
    out as systemd lays it out, is the password the controller's settings read."""
    unit = directives()
    assert "EnvironmentFile" not in unit or all(v.startswith("-") for v in unit["EnvironmentFile"])
    (credential,) = unit["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source.startswith("/etc/rheostat/")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / name).write_text("from-systemd")
    for variable in ("RHEOSTAT_MQTT_PASSWORD", "RHEOSTAT_SECRETS_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    password = load_secrets().mqtt_password
    assert password is not None
    assert password.get_secret_value() == "from-systemd"
    # No password in the unit itself.
    assert not any("PASSWORD" in v for v in unit.get("Environment", []))


def _sandbox(tmp_path: Path, state: Path | None) -> subprocess.CompletedProcess[str]:
    """Runs STORE_SNIPPET in the namespace the unit's directives describe (see the docstring)."""
    unshare, setpriv = require_binary("unshare"), require_binary("setpriv")
    if not _can_unshare():  # reached under CI only: there a missing capability is a failure
        pytest.fail("the unit's sandbox needs root and mount namespaces (unshare --mount)")
    unit = directives()
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["PrivateTmp"] == ["yes"]
    config = unit["ExecStart"][0].split("--policy", 1)[1].split()[0]
    state_dir = f"/var/lib/{unit['StateDirectory'][0]}"
    script = tmp_path / "sandbox.sh"
    setup = ["set -e"]
    keep = ["/proc*", "/sys*", "/dev*", "/tmp", "/var/tmp"]
    env = ["PATH=/usr/bin:/bin"]
    if state is not None:
        setup += [
            "mount -t tmpfs -o mode=0755 tmpfs /var/lib",
            f"mkdir {state_dir}",
            f"mount --bind {state} {state_dir}",
        ]
        keep.append(state_dir)
        env.append(f"STATE_DIRECTORY={state_dir}")
    setup += [
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        "mount -t tmpfs -o mode=1777 tmpfs /var/tmp",
        "for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do",
        f'  case "$m" in {"|".join(keep)}) continue;; esac',
        '  mount -o remount,bind,ro "$m"',
        "done",
        (
            f"exec {setpriv} --no-new-privs --inh-caps=-all --bounding-set=-all"
            f' env -i {" ".join(env)} "$@"'
        ),
    ]
    script.write_text("\n".join(setup) + "\n")
    return subprocess.run(
        [
            *(unshare, "--mount", "--propagation", "private", "sh", str(script)),
            *(sys.executable, "-c", STORE_SNIPPET, str(Path(config).parent)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], check=False).returncode == 0


#: Under CI the sandbox must be built (a missing capability fails the test); elsewhere it skips.
needs_namespaces = pytest.mark.skipif(
    not IN_CI and not _can_unshare(),
    reason="needs root and mount namespaces (unshare) to build the sandbox",
)


@needs_namespaces
def test_the_store_writes_in_the_units_sandbox(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    result = _sandbox(tmp_path, state)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/var/lib/rheostat/rheostat-events.sqlite"
    with sqlite3.connect(state / "rheostat-events.sqlite") as conn:
        rows = conn.execute("SELECT event_id, note FROM dr_event").fetchall()
    assert rows == [("e1", "written in the sandbox")]


@needs_namespaces
def test_without_the_state_directory_the_store_cannot_open(tmp_path: Path) -> None:
    # What the unit did before it had StateDirectory=: the path beside the read-only policy.
    result = _sandbox(tmp_path, None)
    assert result.returncode != 0
    assert "cannot open the event store" in result.stderr
    assert "Read-only file system" in result.stderr
