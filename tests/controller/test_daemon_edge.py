"""The daemon's receive boundary: one message's fault is counted by kind and the loop goes on;
commands carry this instance's id and count from 1, never from a clock."""

from __future__ import annotations

import numpy as np
import pytest

from controller import wire
from controller.daemon import Controller
from controller.policy_file import parse_policy
from controller.wire import MessageRejections
from policies.decision import Decision
from policies.errors import ProtocolError

POLICY = "site: {name: edge, topology: {generate: {gpus: 64, a100_share: 0}}}\n"


@pytest.mark.parametrize(
    ("topic", "kind"),
    [
        ("rheostat/v1/edge/telemetry/r00000", "telemetry"),
        ("rheostat/v1/edge/grid/event/x", "grid_event"),
        ("rheostat/v1/edge/grid/event", "grid_event"),
        ("rheostat/v1/edge/grid/signal", "signal"),
        ("rheostat/v1/edge/jobs/j", "job"),
        ("rheostat/v1/edge/facility", "facility"),
        ("rheostat/v1/other/facility", "other"),
        ("x" * 10_000, "other"),
    ],
)
def test_a_fault_while_handling_one_message_is_counted_by_kind(topic: str, kind: str) -> None:
    controller = Controller(parse_policy(POLICY, source="t"))

    def broken(topic: str, payload: bytes) -> bool:
        raise KeyError(payload)

    handle = controller._guarded(broken)
    assert handle(topic, b"{}") is False
    assert handle(topic, b"{}") is False
    assert controller.rejections.counts == {(kind, "internal_error"): 2}


def test_typed_refusals_keep_their_reason_and_unknown_labels_collapse() -> None:
    rejections = MessageRejections()
    rejections.count("grid_event", ProtocolError("x", reason="out_of_range"))
    rejections.count("made-up", ProtocolError("x", reason="made-up"))
    rejections.count("job", ValueError("no reason attribute"))
    assert rejections.counts == {
        ("grid_event", "out_of_range"): 1,
        ("other", "internal_error"): 1,
        ("job", "internal_error"): 1,
    }


def decision(cap_w: float) -> Decision:
    n = 64
    caps = np.full(n, cap_w)
    return Decision(
        cap_w=caps,
        sm_clock_max_mhz=np.full(n, 1980.0),
        demand_w=caps.copy(),
        tier=np.zeros(n, np.int8),
        budget_w=(),
        limit_w=(),
        infeasible=(),
        site_allowed_w=float("inf"),
        dvfs_saving_w=0.0,
    )


def test_commands_carry_the_instance_id_and_count_from_one() -> None:
    wall_s = 2_000_000_000.0
    first = Controller(parse_policy(POLICY, source="t"), clock=lambda: wall_s)
    second = Controller(parse_policy(POLICY, source="t"), clock=lambda: wall_s - 600.0)
    assert first.instance != second.instance
    assert wire.is_id(first.instance)
    for controller in (first, second):
        book = controller.runtime.book
        (rack, payload), _ = book.build(decision(500.0), np.array([0, 1]), now_s=5.0)
        cmd = wire.decode_command(payload)
        assert (cmd.epoch, cmd.ctl, cmd.seq) == (0, controller.instance, 1)
        assert rack == "r00000"
    # A restarted controller (its wall clock 600 s behind) is obeyed from its first command.
    held = wire.HeldCommand(epoch=0, ctl=first.instance, seq=99)
    ((_, payload),) = second.runtime.book.build(decision(400.0), np.array([0]), now_s=6.0)
    assert wire.accept_command(held, wire.decode_command(payload)) is None
