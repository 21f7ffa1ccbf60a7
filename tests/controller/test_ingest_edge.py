"""Ingest against hostile senders: huge integers, poisoned sequences, skewed clocks, class floods.

Each case is what an attacker or a broken agent can send with valid credentials; none of them may
stop ingest, lock a rack out for longer than one stale period, or grow a table without bound.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from controller import wire
from controller.ingest import ClassTable, Ingest
from policies.fleet import UNKNOWN_CLASS, FleetState
from policies.topology import generate_topology

TOPO = generate_topology(64, site="t")  # two racks of 32 GPUs
RACK = "r00001"
STALE_S = 5.0
SKEW_S = 30.0


class Clocks:
    """The controller's wall clock and monotonic clock, stepped by hand."""

    def __init__(self) -> None:
        self.wall_s = 1_764_000_000.0
        self.mono_s = 1000.0

    def advance(self, dt_s: float) -> None:
        self.wall_s += dt_s
        self.mono_s += dt_s


def telemetry(seq: int, ts_s: float, n: int = 32, **extra: Any) -> bytes:
    obj = {
        "v": 1,
        "rack": RACK,
        "seq": seq,
        "ts": ts_s,
        "power_w": [500.0] * n,
        "sm_clock_mhz": [1900.0] * n,
        "util": [0.9] * n,
        "mem_util": [0.3] * n,
        "temp_c": [60.0] * n,
        "cap_w": [700.0] * n,
        "classes": ["training"],
        "class_idx": [0] * n,
        "rack_power_w": 20000.0,
    } | extra
    return orjson.dumps(obj)


def make(clocks: Clocks, classes: ClassTable | None = None) -> Ingest:
    return Ingest(
        TOPO,
        FleetState.empty(TOPO),
        classes or ClassTable(),
        restart_gap_s=1.0,
        clock=lambda: clocks.mono_s,
        wall_clock=lambda: clocks.wall_s,
        max_clock_skew_s=SKEW_S,
        stale_after_s=STALE_S,
    )


def send(ingest: Ingest, payload: bytes) -> bool:
    return ingest.handle(wire.telemetry_topic("t", RACK), payload)


def test_a_sequence_number_past_safe_integers_is_rejected_and_ingest_goes_on() -> None:
    clocks = Clocks()
    ingest = make(clocks)
    for seq in (2**63, 2**53, -1):
        assert not send(ingest, telemetry(seq, clocks.wall_s))
    assert ingest.counters.rejected["out_of_range"] == 3
    assert send(ingest, telemetry(1, clocks.wall_s))
    assert ingest.fleet.rack_seq[1] == 1


def test_a_new_boot_id_restarts_the_sequence() -> None:
    clocks = Clocks()
    ingest = make(clocks)
    assert send(ingest, telemetry(500, clocks.wall_s, boot="boot-a"))
    clocks.advance(0.1)
    assert not send(ingest, telemetry(3, clocks.wall_s, boot="boot-a"))  # same boot: a replay
    assert ingest.counters.rejected["stale_sequence"] == 1
    assert send(ingest, telemetry(1, clocks.wall_s, boot="boot-b"))  # rebooted: from 1 again
    clocks.advance(0.1)
    assert send(ingest, telemetry(2, clocks.wall_s, boot="boot-b"))
    assert ingest.fleet.rack_seq[1] == 2


@pytest.mark.parametrize("offset_s", [365 * 86_400.0, -365 * 86_400.0, SKEW_S + 1])
def test_timestamps_beyond_the_skew_are_rejected_before_they_move_the_sequence(
    offset_s: float,
) -> None:
    clocks = Clocks()
    ingest = make(clocks)
    assert send(ingest, telemetry(10, clocks.wall_s, boot="b"))
    assert not send(ingest, telemetry(10 + 10**6, clocks.wall_s + offset_s, boot="b"))
    assert ingest.counters.rejected["clock_skew"] == 1
    assert ingest.fleet.rack_seq[1] == 10
    clocks.advance(1.0)
    assert send(ingest, telemetry(11, clocks.wall_s, boot="b"))  # genuine traffic unaffected


@pytest.mark.parametrize("step_s", [-600.0, 600.0])
def test_a_step_of_the_controllers_wall_clock_rejects_no_rack(step_s: float) -> None:
    clocks = Clocks()
    ingest = make(clocks)
    agent_wall_s = clocks.wall_s
    assert send(ingest, telemetry(1, agent_wall_s, boot="b"))
    clocks.wall_s += step_s  # the controller's clock steps; the agents' and monotonic time don't
    for seq in range(2, 30):
        clocks.mono_s += 0.1
        agent_wall_s += 0.1
        assert send(ingest, telemetry(seq, agent_wall_s, boot="b"))
    assert ingest.counters.rejected["clock_skew"] == 0


def test_racks_that_agree_win_over_a_controller_clock_that_was_wrong_from_the_start() -> None:
    clocks = Clocks()
    ingest = make(clocks)
    agent_wall_s = clocks.wall_s + 600.0  # the controller started 600 s behind everyone
    racks = TOPO.racks.ids
    for k in range(80):  # 8 s at 10 Hz, from both racks
        clocks.mono_s += 0.1
        agent_wall_s += 0.1
        for rack in racks:
            payload = orjson.loads(telemetry(k + 1, agent_wall_s, boot="b")) | {"rack": rack}
            ingest.handle(wire.telemetry_topic("t", rack), orjson.dumps(payload))
    # Refused while the controller's clock was all there was, then taken after a stale period.
    assert ingest.counters.rejected["clock_skew"] > 0
    assert ingest.counters.accepted > 0
    assert clocks.mono_s - ingest.fleet.rack_last_seen_s.min() < 0.2


def test_a_poisoned_sequence_locks_a_rack_out_for_at_most_one_stale_period() -> None:
    clocks = Clocks()
    ingest = make(clocks)
    assert send(ingest, telemetry(10, clocks.wall_s, boot="b"))
    clocks.advance(0.5)
    # A forged message inside the skew window jumps the sequence a million ahead.
    assert send(ingest, telemetry(10 + 10**6, clocks.wall_s, boot="b"))
    forged_at = clocks.mono_s
    genuine, accepted_at = 11, None
    for _ in range(200):  # the genuine agent goes on at 10 Hz
        clocks.advance(0.1)
        if send(ingest, telemetry(genuine, clocks.wall_s, boot="b")):
            accepted_at = clocks.mono_s
            break
        genuine += 1
    assert accepted_at is not None
    assert STALE_S <= accepted_at - forged_at <= STALE_S + 0.2
    assert ingest.counters.rebased == 1
    clocks.advance(0.1)
    assert send(ingest, telemetry(genuine + 1, clocks.wall_s, boot="b"))  # re-based


def test_an_agent_whose_clock_ran_ahead_is_rejected_and_counted_not_trusted() -> None:
    clocks = Clocks()
    ingest = make(clocks)
    for k in range(5):
        assert not send(ingest, telemetry(k + 1, clocks.wall_s + 3600.0, boot="b"))
    assert ingest.counters.rejected["clock_skew"] == 5
    assert np.isneginf(ingest.fleet.rack_last_seen_s[1])  # still stale: nothing was believed


def test_class_table_is_bounded_and_unknown_names_map_to_the_default() -> None:
    clocks = Clocks()
    classes = ClassTable(max_classes=8)
    ingest = make(clocks, classes)
    for k in range(100):
        clocks.advance(0.01)
        names = [f"c{k}-{j}" for j in range(32)]
        payload = telemetry(k + 1, clocks.wall_s, classes=names, class_idx=list(range(32)))
        assert send(ingest, payload)
    assert len(classes.names) == 9  # the unknown class and eight names
    assert classes.overflow > 0
    assert ingest.fleet.workload_class[63] == UNKNOWN_CLASS


def test_agent_rejection_counts_become_one_counter_that_never_goes_down() -> None:
    clocks = Clocks()
    ingest = make(clocks)
    stale_seq = wire.COMMAND_REJECT_REASONS.index("stale_seq")
    for seq, boot, count in ((1, "a", 2), (2, "a", 5), (3, "b", 1), (4, "b", 1)):
        clocks.advance(0.1)
        payload = telemetry(seq, clocks.wall_s, boot=boot, cmd_rejected={"stale_seq": count})
        assert send(ingest, payload)
    assert ingest.agents.rejected_total[stale_seq] == 5 + 1  # 2 then +3, then a reboot's 1
    clocks.advance(0.1)
    assert send(ingest, telemetry(5, clocks.wall_s, boot="b", fallback=True, cmd_seq=7))
    assert ingest.agents.fallback[1]
    assert ingest.agents.cmd_seq[1] == 7


def test_an_unexpected_fault_in_one_message_is_counted_and_ingest_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clocks = Clocks()
    ingest = make(clocks)

    def broken(names: tuple[str, ...]) -> Any:
        raise ZeroDivisionError(names)

    monkeypatch.setattr(ingest.classes, "codes", broken)
    assert not send(ingest, telemetry(1, clocks.wall_s))
    assert ingest.counters.rejected["internal_error"] == 1
    monkeypatch.undo()
    clocks.advance(0.1)
    assert send(ingest, telemetry(2, clocks.wall_s))


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc). Units: bytes."""
    fields = Path("/proc/self/statm").read_text().split()
    import os

    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def hostile_flood(ingest: Ingest, clocks: Clocks, n_messages: int) -> None:
    """`n_messages` hostile telemetry messages: new class names in each (256 of 64 chars), a
    new boot id, poisoned and huge sequences, skewed clocks, unknown racks."""
    names_base = "x" * 56
    for k in range(n_messages):
        clocks.advance(0.001)
        kind = k % 4
        if kind == 0:
            names = [f"{names_base}{k:06d}{j:02x}"[:64] for j in range(8)]
            payload = telemetry(
                k + 1, clocks.wall_s, boot=f"b{k}", classes=names, class_idx=[k % 8] * 32
            )
        elif kind == 1:
            payload = telemetry(2**63, clocks.wall_s)
        elif kind == 2:
            payload = telemetry(k, clocks.wall_s + 1e7, boot=f"z{k}")
        else:
            payload = telemetry(k, clocks.wall_s, rack=f"evil-{k}")
        ingest.handle(wire.telemetry_topic("t", RACK if kind != 3 else f"evil-{k}"), payload)


def test_memory_stays_flat_under_a_flood_of_hostile_messages() -> None:
    clocks = Clocks()
    ingest = make(clocks, ClassTable(max_classes=1024))
    hostile_flood(ingest, clocks, 20_000)  # warm up: every table reaches its bound
    gc.collect()
    before = _rss_bytes()
    hostile_flood(ingest, clocks, 50_000)
    gc.collect()
    after = _rss_bytes()
    assert after <= before * 1.10, (before, after)
    assert len(ingest.classes.names) <= 1025
    assert ingest.counters.rejected["internal_error"] == 0


if __name__ == "__main__":
    # docs/reliability.md's figure: `python -m tests.controller.test_ingest_edge 1000000` floods one
    # ingest with that many hostile messages after the warm-up and prints RSS before and after.
    import sys
    import time

    n_flood = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    flood_clocks = Clocks()
    flooded = make(flood_clocks, ClassTable(max_classes=1024))
    hostile_flood(flooded, flood_clocks, 20_000)
    gc.collect()
    rss_before = _rss_bytes()
    started = time.perf_counter()
    hostile_flood(flooded, flood_clocks, n_flood)
    elapsed_s = time.perf_counter() - started
    gc.collect()
    rss_after = _rss_bytes()
    print(
        f"{n_flood} hostile messages in {elapsed_s:.1f} s: RSS {rss_before / 2**20:.1f} MiB -> "
        f"{rss_after / 2**20:.1f} MiB ({(rss_after / rss_before - 1) * 100:+.1f} %); "
        f"classes {len(flooded.classes.names)}, overflow {flooded.classes.overflow}, "
        f"rejected {sum(flooded.counters.rejected.values())}"
    )
