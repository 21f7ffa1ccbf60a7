"""The agent's acceptance rule and TTL watchdog, on explicit monotonic times."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from agent.gate import CommandGate
from controller.wire import NodeCommand


def cmd(epoch: int, ctl: str, seq: int, *, ttl_s: float = 10.0, safe=None) -> NodeCommand:
    return NodeCommand(
        rack="r1",
        epoch=epoch,
        ctl=ctl,
        seq=seq,
        issued_at_s=0.0,
        ttl_s=ttl_s,
        cap_w=np.array([400.0, 500.0]),
        sm_clock_max_mhz=np.array([1980.0, 1980.0]),
        safe_cap_w=None if safe is None else np.asarray(safe, float),
    )


def gate() -> CommandGate:
    return CommandGate(configured_safe_cap_w=np.array([200.0, 200.0]))


def test_acceptance_rule_cases():
    g = gate()
    assert g.offer(cmd(1, "a", 5), 0.0)
    assert not g.offer(cmd(1, "a", 5), 0.1)  # replay
    assert not g.offer(cmd(1, "a", 4), 0.2)  # older
    assert g.offer(cmd(1, "a", 6), 0.3)
    assert g.offer(cmd(1, "b", 1), 0.4)  # restarted controller, same term: its seq starts over
    assert not g.offer(cmd(0, "c", 99), 0.5)  # an old leader
    assert g.offer(cmd(2, "a", 1), 0.6)  # a new term wins whatever its seq
    assert g.rejected["stale_seq"] == 2
    assert g.rejected["stale_epoch"] == 1
    assert (g.cmd_epoch, g.cmd_seq, g.accepted) == (2, 1, 4)


@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from("ab"), st.integers(0, 5))))
def test_accepted_commands_never_go_back(offers):
    """Whatever arrives, the held (epoch, seq) of one instance only moves forward."""
    g = gate()
    held: list[tuple[int, str, int]] = []
    for epoch, ctl, seq in offers:
        if g.offer(cmd(epoch, ctl, seq), 0.0):
            if held:
                e0, c0, s0 = held[-1]
                assert epoch > e0 or (epoch == e0 and (ctl != c0 or seq > s0))
            held.append((epoch, ctl, seq))
    assert g.accepted + sum(g.rejected.values()) == len(offers)


def test_watchdog_fires_once_at_the_ttl_with_the_commands_safe_caps():
    g = gate()
    g.offer(cmd(1, "a", 1, ttl_s=5.0, safe=[250.0, 260.0]), 100.0)
    assert g.due(104.99) is None
    safe = g.due(105.0)
    assert safe is not None
    np.testing.assert_array_equal(safe, [250.0, 260.0])
    assert g.fallback
    assert g.due(200.0) is None  # once
    assert g.offer(cmd(1, "a", 2, ttl_s=5.0), 201.0)
    assert not g.fallback
    safe = g.due(206.0)  # no safe_cap_w in this one: the configured caps
    assert safe is not None
    np.testing.assert_array_equal(safe, [200.0, 200.0])
    assert g.fallbacks == 2


def test_no_command_no_fallback():
    assert gate().due(1e9) is None
