"""One set of rules for a policy file: `rheostat check` and the daemon's reload agree, and safe
caps that would not fit with every rack on them are refused, naming the group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.cli import main
from controller.daemon import Controller
from controller.policy_file import load_policy, parse_policy
from policies.errors import ConfigErrors
from policies.safe_caps import safe_cap_overruns

#: 2 racks of 32 H100s (4 servers of 2.8 kW each) on 28 kW breakers at 0.8: 22.4 kW usable, of
#: which the servers take 11.2 kW, so the GPUs may have 350 W each with both racks at once.
TEXT = """\
site:
  name: lab
  topology: {generate: {gpus: 64, a100_share: 0, racks_per_row: 2}}
limits:
  rack_breaker_w: 28000
  contract_w: 60000
control:
  command_ttl_s: 10
mqtt: {port: 1883, client_id: lab-ctl}
metrics: {port: 0}
"""


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_derived_safe_caps_fit_every_limit_and_check_reports_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = load_policy(write(tmp_path, TEXT))
    assert not safe_cap_overruns(policy.topology, policy.safe_cap_w)
    assert policy.safe_cap_w.max() == pytest.approx(350.0, rel=1e-6)
    assert main(["check", str(tmp_path / "policy.yaml")]) == 0
    assert "safe caps 0.50-0.50 of max cap" in capsys.readouterr().out


def test_check_refuses_configured_safe_caps_that_do_not_fit_and_names_each_rack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, TEXT.replace("  command_ttl_s: 10\n", "  safe_cap_frac: 0.6\n"))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:8: control.safe_cap_frac: does not fit: rack r00000:" in err
    assert "rack r00001:" in err
    assert "over its usable 22400 W" in err
    # One that fits is accepted and is what the commands carry.
    ok = load_policy(
        write(tmp_path, TEXT.replace("  command_ttl_s: 10\n", "  safe_cap_frac: 0.5\n"))
    )
    np.testing.assert_array_equal(ok.safe_cap_w, 350.0)


def test_check_refuses_a_topology_where_not_even_min_caps_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, TEXT.replace("rack_breaker_w: 28000", "rack_breaker_w: 20000"))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "site.topology: even min caps do not fit: rack r00000:" in err


async def test_check_and_reload_refuse_a_renamed_site_with_the_same_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running = write(tmp_path, TEXT)
    controller = Controller(load_policy(running), policy_path=running)
    kept = write(tmp_path, TEXT, "kept.yaml")  # what the operator copies away before editing
    renamed = TEXT.replace("name: lab", "name: lab2").replace("port: 1883", "port: 1884")
    running.write_text(renamed)

    assert main(["check", str(running), "--running", str(kept)]) == 1
    err = capsys.readouterr().err
    assert f"{running}: site.name: the running controller serves site 'lab'" in err
    assert f"{running}: mqtt.port: changes only with a restart" in err
    assert not await controller.reload()
    assert controller.runtime.policy.site == "lab"
    # Without the running policy, the file on its own is valid.
    assert main(["check", str(running)]) == 0
    capsys.readouterr()

    # Safe caps that do not fit: both refuse, naming the racks.
    running.write_text(TEXT.replace("  command_ttl_s: 10\n", "  safe_cap_frac: 0.6\n"))
    assert main(["check", str(running), "--running", str(kept)]) == 1
    assert "control.safe_cap_frac: does not fit: rack r00000" in capsys.readouterr().err
    assert not await controller.reload()
    assert controller.runtime.reloads.failures == 2

    # A change both accept: check says ok, and the reload takes it.
    running.write_text(TEXT.replace("command_ttl_s: 10", "command_ttl_s: 20"))
    assert main(["check", str(running), "--running", str(kept)]) == 0
    assert "may replace" in capsys.readouterr().out
    assert await controller.reload()
    assert controller.runtime.book.ttl_s == 20.0


async def test_a_reload_that_changes_the_safe_caps_resends_every_rack(tmp_path: Path) -> None:
    path = write(tmp_path, TEXT)
    controller = Controller(load_policy(path), policy_path=path)
    book = controller.runtime.book
    assert book.safe_cap_w is not None
    np.testing.assert_array_equal(book.safe_cap_w, controller.runtime.policy.safe_cap_w)
    book.sent_at_s[:] = 0.0  # as if every rack had just been commanded
    path.write_text(TEXT.replace("rack_breaker_w: 28000", "rack_breaker_w: 26000"))
    assert await controller.reload()
    assert book.safe_cap_w.max() == pytest.approx((26000 * 0.8 - 11200) / 32, rel=1e-6)
    assert np.all(book.sent_at_s == -np.inf)  # every rack due, with its new safe caps


def test_parse_errors_name_the_file_and_field() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_policy(TEXT.replace("  command_ttl_s: 10\n", "  safe_cap_frac: 0.9\n"), source="p")
    assert {e.field for e in info.value.errors} == {"control.safe_cap_frac"}


def test_with_a_facility_contract_safe_caps_fit_the_it_power_it_leaves(tmp_path: Path) -> None:
    from policies.facility import it_budget

    text = TEXT + "facility: {contract_w: 60000, cooling: air, design_outdoor_c: 35}\n"
    policy = load_policy(write(tmp_path, text))
    section = policy.config.facility
    assert section is not None
    it_w = it_budget(60000.0, outdoor_c=35.0, settings=section.settings()).budget_w
    topo = policy.topology
    draw_w = float(policy.safe_cap_w.sum() + topo.overhead_under(len(topo.levels) - 1)[0])
    assert draw_w <= it_w
    assert draw_w >= 0.99 * it_w * (1 - policy.config.capping.site_margin_frac)  # the site binds
    assert (
        policy.safe_cap_w.max() < load_policy(write(tmp_path, TEXT, "plain.yaml")).safe_cap_w.max()
    )
