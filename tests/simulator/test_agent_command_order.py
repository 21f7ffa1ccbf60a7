"""The agents' command rules: order by (epoch, controller instance, seq), TTL on their monotonic
clock, and what their telemetry reports (boot id, last command applied, rejections, fallback)."""

from __future__ import annotations

import numpy as np
import pytest

from controller import wire
from simulator.agents import RackAgents
from simulator.build import build_cluster
from simulator.scenario import Scenario

SITE = "order"


class Monotonic:
    def __init__(self) -> None:
        self.now_s = 50.0

    def __call__(self) -> float:
        return self.now_s


def agents_for_test(mono: Monotonic) -> RackAgents:
    scenario = Scenario.model_validate(
        {
            "name": "order",
            "duration_s": 60,
            "topology": {"gpus": 64, "a100_share": 0.0},
            "physics": {"actuation_lag_s": 0.0, "telemetry_delay_s": 0.0},
            "workloads": [{"kind": "training", "name": "t", "gpus": 64, "iteration_s": 4.0}],
        }
    )
    cluster = build_cluster(scenario, site=SITE)
    # The agent's wall clock is a year off: nothing it does may depend on it.
    return RackAgents(
        cluster=cluster,
        site=SITE,
        safe_cap_w=250.0,
        monotonic=mono,
        wall_clock=lambda: 1.0e9,
    )


def caps_now(agents: RackAgents) -> np.ndarray:
    """Rack 0's caps once the cluster has applied what it was given (no actuation lag)."""
    agents.cluster.step()
    return agents.cluster.cap_w[:32]


def command(
    *, epoch: int, ctl: str, seq: int, cap_w: float = 500.0, ttl_s: float = 10.0, issued: float
) -> bytes:
    return wire.encode_command(
        wire.Command(
            rack="r00000",
            epoch=epoch,
            ctl=ctl,
            seq=seq,
            issued_at_s=issued,
            ttl_s=ttl_s,
            cap_w=np.full(32, cap_w),
            sm_clock_max_mhz=np.full(32, 1980.0),
        )
    )


@pytest.mark.parametrize(
    ("held", "incoming", "verdict"),
    [
        ((1, "a", 5), (2, "a", 1), None),  # a higher epoch wins, whatever its seq
        ((1, "a", 5), (0, "a", 99), "stale_epoch"),
        ((1, "a", 5), (1, "b", 1), None),  # a restarted controller in the same term
        ((1, "a", 5), (1, "a", 6), None),
        ((1, "a", 5), (1, "a", 5), "stale_seq"),  # a duplicate
        ((1, "a", 5), (1, "a", 4), "stale_seq"),
    ],
)
def test_acceptance_rule(
    held: tuple[int, str, int], incoming: tuple[int, str, int], verdict: str | None
) -> None:
    epoch, ctl, seq = incoming
    cmd = wire.decode_command(command(epoch=epoch, ctl=ctl, seq=seq, issued=0.0))
    assert wire.accept_command(wire.HeldCommand(epoch=held[0], ctl=held[1], seq=held[2]), cmd) == (
        verdict
    )
    assert wire.accept_command(None, cmd) is None


def test_commands_are_ordered_by_counters_not_by_issue_time() -> None:
    mono = Monotonic()
    agents = agents_for_test(mono)
    assert agents.handle_command(0, command(epoch=0, ctl="c1", seq=1, issued=2_000_000_000.0))
    # The controller's wall clock stepped back 600 s: its next command is still newer.
    assert agents.handle_command(
        0, command(epoch=0, ctl="c1", seq=2, cap_w=450.0, issued=2_000_000_000.0 - 600)
    )
    np.testing.assert_array_equal(caps_now(agents), 450.0)
    # A replay of seq 1 is refused, counted, and shows in telemetry.
    assert not agents.handle_command(0, command(epoch=0, ctl="c1", seq=1, issued=3e9))
    # A restarted controller (new instance id, same epoch) begins again at seq 1: accepted.
    assert agents.handle_command(0, command(epoch=0, ctl="c2", seq=1, cap_w=400.0, issued=0.0))
    # A deposed leader's older epoch is refused once a newer one was seen.
    assert agents.handle_command(0, command(epoch=3, ctl="c3", seq=1, issued=0.0))
    assert not agents.handle_command(0, command(epoch=2, ctl="c2", seq=99, issued=9e9))
    assert not agents.handle_command(0, b'{"v": 1, "rack": "r00000", "seq": 18446744073709551616}')
    assert not agents.handle_command(0, command(epoch=3, ctl="c3", seq=2, issued=0.0)[:-3])

    msg = wire.decode_telemetry(wire.encode_telemetry(agents.telemetry(0)), rack="r00000")
    assert msg.boot is not None
    assert (msg.cmd_epoch, msg.cmd_seq) == (3, 1)
    # A seq beyond the safe integers is out of range (the wire's rule); a cut payload malformed.
    assert msg.cmd_rejected == {
        "stale_seq": 1,
        "stale_epoch": 1,
        "out_of_range": 1,
        "malformed": 1,
    }
    assert not msg.fallback


def test_ttl_counts_on_the_agents_monotonic_clock_from_receipt() -> None:
    mono = Monotonic()
    agents = agents_for_test(mono)
    # Issued "long ago" by a wall clock: irrelevant, the TTL starts when the agent receives it.
    assert agents.handle_command(0, command(epoch=0, ctl="c1", seq=1, ttl_s=3.0, issued=1.0))
    mono.now_s += 2.9
    assert agents.check_expiry(mono.now_s).size == 0
    mono.now_s += 0.2
    assert agents.check_expiry(mono.now_s).tolist() == [0]
    np.testing.assert_array_equal(caps_now(agents), 250.0)
    assert wire.decode_telemetry(wire.encode_telemetry(agents.telemetry(0))).fallback
    # A reboot restarts the sequence and the counts, under a new boot id.
    boot = agents.boots[0]
    agents.reboot(0)
    msg = agents.telemetry(0)
    assert msg.boot != boot
    assert msg.seq == 1
    assert msg.cmd_seq is None
