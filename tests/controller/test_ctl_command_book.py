"""The command book commands a rack only when it is due, and what it sends is the decision."""

from __future__ import annotations

import numpy as np

from controller import wire
from controller.command_book import CommandBook
from policies.decision import Decision
from policies.topology import Topology, generate_topology


def decision_with_caps(cap_w: np.ndarray, clock_mhz: float = 1980.0) -> Decision:
    n = cap_w.size
    return Decision(
        cap_w=cap_w,
        sm_clock_max_mhz=np.full(n, clock_mhz),
        demand_w=cap_w.copy(),
        tier=np.zeros(n, np.int8),
        budget_w=(),
        limit_w=(),
        infeasible=(),
        site_allowed_w=float("inf"),
        dvfs_saving_w=0.0,
    )


def _book(topo: Topology) -> CommandBook:
    return CommandBook(topo, ttl_s=30.0, refresh_frac=0.5, deadband_w=5.0, seq_base=100)


def test_only_racks_past_the_deadband_are_due_and_lowering_goes_first() -> None:
    topo = generate_topology(4 * 32, site="t", servers_per_rack=4)  # 4 racks of 32 GPUs
    book = _book(topo)
    fresh = np.zeros(topo.n_racks, np.bool_)
    caps = np.full(topo.n_gpus, 500.0)
    first = book.due(decision_with_caps(caps), now_s=0.0, stale_rack=fresh)
    assert sorted(first.tolist()) == [0, 1, 2, 3]  # nothing sent yet: everyone is due
    book.build(decision_with_caps(caps), first, now_s=0.0)

    caps = caps.copy()
    caps[topo.rack_slice(0)] += 4.0  # under the deadband on every GPU
    caps[40] += 6.0  # one GPU of rack 1 past it
    caps[topo.rack_slice(3)] -= 50.0  # rack 3 lowered
    due = book.due(decision_with_caps(caps), now_s=1.0, stale_rack=fresh)
    assert due.tolist() == [3, 1]

    stale = fresh.copy()
    stale[3] = True  # a blind rack is still commanded: it may hear the cut it needs
    assert book.due(decision_with_caps(caps), now_s=1.0, stale_rack=stale).tolist() == [3, 1]
    # the TTL refresh makes every fresh rack due again
    assert sorted(book.due(decision_with_caps(caps), now_s=15.0, stale_rack=fresh).tolist()) == [
        0,
        1,
        2,
        3,
    ]


def test_within_each_direction_the_largest_move_goes_first() -> None:
    topo = generate_topology(5 * 32, site="t", servers_per_rack=4)
    book = _book(topo)
    fresh = np.zeros(topo.n_racks, np.bool_)
    caps = np.full(topo.n_gpus, 500.0)
    book.build(decision_with_caps(caps), np.arange(topo.n_racks), now_s=0.0)
    caps = caps.copy()
    for rack, move_w in enumerate([8.0, -10.0, 300.0, -200.0, 20.0]):
        caps[topo.rack_slice(rack).start] += move_w  # one GPU of each rack moves
    due = book.due(decision_with_caps(caps), now_s=1.0, stale_rack=fresh)
    assert due.tolist() == [3, 1, 2, 4, 0]


def test_blind_racks_are_commanded_and_go_first_among_those_lowered() -> None:
    topo = generate_topology(4 * 32, site="t", servers_per_rack=4)
    book = _book(topo)
    caps = np.full(topo.n_gpus, 500.0)
    book.build(decision_with_caps(caps), np.arange(topo.n_racks), now_s=0.0)
    caps = caps.copy()
    for rack, move_w in enumerate([-100.0, -30.0, 50.0, -10.0]):
        caps[topo.rack_slice(rack)] += move_w
    blind = np.ones(topo.n_racks, np.bool_)
    blind[0] = False
    due = book.due(decision_with_caps(caps), now_s=1.0, stale_rack=blind)
    assert due.tolist() == [1, 3, 0, 2]
    # a rack never heard from since the start is left alone (it keeps what it was given before)
    last_seen = np.array([1.0, 0.5, -np.inf, 0.2])
    assert book.due(
        decision_with_caps(caps), now_s=1.0, stale_rack=blind, last_seen_s=last_seen
    ).tolist() == [
        1,
        3,
        0,
    ]
    # every rack blind: all are still due at the refresh, so none falls to its safe caps
    book.build(decision_with_caps(caps), due, now_s=1.0)
    assert sorted(
        book.due(decision_with_caps(caps), now_s=16.0, stale_rack=blind | True).tolist()
    ) == [
        0,
        1,
        2,
        3,
    ]


def test_commands_carry_each_racks_safe_caps_and_new_ones_make_every_rack_due() -> None:
    topo = generate_topology(3 * 32, site="t", servers_per_rack=4)
    safe = np.linspace(250.0, 390.123456, topo.n_gpus)
    book = CommandBook(
        topo, ttl_s=30.0, refresh_frac=0.5, deadband_w=5.0, seq_base=0, safe_cap_w=safe
    )
    caps = np.full(topo.n_gpus, 400.0)
    fresh = np.zeros(topo.n_racks, np.bool_)
    for rack, payload in book.build(decision_with_caps(caps), np.arange(3), now_s=0.0):
        cmd = wire.decode_command(payload, rack=rack)
        rows = topo.rack_slice(topo.rack_index[rack])
        assert cmd.safe_cap_w is not None
        # rounded down to 0.1 W: never above the caps that were derived to fit
        assert np.all(cmd.safe_cap_w <= safe[rows])
        np.testing.assert_allclose(cmd.safe_cap_w, safe[rows], atol=0.1)
    assert book.due(decision_with_caps(caps), now_s=1.0, stale_rack=fresh).size == 0
    book.configure(ttl_s=30.0, refresh_frac=0.5, deadband_w=5.0, safe_cap_w=safe.copy())
    assert book.due(decision_with_caps(caps), now_s=1.0, stale_rack=fresh).size == 0  # same caps
    book.configure(ttl_s=30.0, refresh_frac=0.5, deadband_w=5.0, safe_cap_w=safe - 10.0)
    assert sorted(book.due(decision_with_caps(caps), now_s=1.0, stale_rack=fresh).tolist()) == [
        0,
        1,
        2,
    ]


def test_build_sends_the_decision_and_remembers_only_the_racks_sent() -> None:
    topo = generate_topology(3 * 32, site="t", servers_per_rack=4)
    book = _book(topo)
    caps = np.linspace(200.0, 700.0, topo.n_gpus)
    messages = book.build(decision_with_caps(caps, 1500.0), np.array([2, 0]), now_s=5.0)
    assert [rack for rack, _ in messages] == [topo.racks.ids[2], topo.racks.ids[0]]
    for rack, payload in messages:
        r = topo.rack_index[rack]
        cmd = wire.decode_command(payload, rack=rack)
        assert cmd.seq == 101
        assert cmd.issued_at_s == 5.0
        assert cmd.ttl_s == 30.0
        np.testing.assert_allclose(cmd.cap_w, caps[topo.rack_slice(r)], atol=0.05)
        np.testing.assert_array_equal(cmd.sm_clock_max_mhz, 1500.0)
        assert cmd.safe_cap_w is None  # this book was given none: agents keep their own
        np.testing.assert_array_equal(book.sent_cap_w[topo.rack_slice(r)], caps[topo.rack_slice(r)])
    assert np.isnan(book.sent_cap_w[topo.rack_slice(1)]).all()  # rack 1 was not sent
    assert book.sent_at_s.tolist() == [5.0, -np.inf, 5.0]
    assert book.sent_total == 2


def test_adopting_a_fleet_makes_every_rack_due_lowering_first() -> None:
    topo = generate_topology(4 * 32, site="t", servers_per_rack=4)  # 4 racks of 32 GPUs
    book = _book(topo)
    held = np.full(topo.n_gpus, 500.0)  # what the racks report applying
    book.adopt(held)
    new = held.copy()
    new[topo.rack_slice(0)] = 700.0  # rack 0 goes up
    new[topo.rack_slice(3)] = 300.0  # rack 3 comes down
    due = book.due(decision_with_caps(new), now_s=0.0, stale_rack=np.zeros(topo.n_racks, np.bool_))
    assert sorted(due.tolist()) == [0, 1, 2, 3]  # a takeover commands every rack
    assert due[0] == 3  # the lowering rack leads


def test_urgent_racks_go_first_by_overdraw_then_lowering_then_raising() -> None:
    """A rack whose GPUs draw now more than its new caps' sum protects a limit: it leads, however
    small its move, and the rest keep their order (lowering first, largest move first). A GPU
    over its new cap in a rack under its caps' sum protects nothing: no limit is exceeded."""
    topo = generate_topology(6 * 32, site="t", servers_per_rack=4)
    book = _book(topo)
    fresh = np.zeros(topo.n_racks, np.bool_)
    caps = np.full(topo.n_gpus, 500.0)
    book.build(decision_with_caps(caps), np.arange(topo.n_racks), now_s=0.0)
    power_w = np.full(topo.n_gpus, 300.0)  # everyone draws well under its caps
    caps = caps.copy()
    moves_w = [-200.0, 100.0, -10.0, -8.0, 50.0, -20.0]
    for rack, move_w in enumerate(moves_w):
        caps[topo.rack_slice(rack)] += move_w
    power_w[topo.rack_slice(3)] = 492.0  # at its new caps ...
    power_w[topo.rack_slice(3).start] = 520.0  # ... and one GPU 28 W over: the rack is, urgent
    power_w[topo.rack_slice(5)] = 480.0
    power_w[topo.rack_slice(5).start + 1] = 560.0  # 80 W over its caps' sum: urgent first
    power_w[topo.rack_slice(2)] = 490.0
    power_w[topo.rack_slice(2).start] = 493.0  # 3 W over: within the deadband
    power_w[topo.rack_slice(4).start] = 700.0  # 150 W over its cap, the rack far under: not urgent
    decision = decision_with_caps(caps)
    urgent, rest = book.due_lanes(decision, now_s=1.0, stale_rack=fresh, power_w=power_w)
    assert urgent.tolist() == [5, 3]
    assert rest.tolist() == [0, 2, 1, 4]
    both = book.due(decision, now_s=1.0, stale_rack=fresh, power_w=power_w)
    assert both.tolist() == [5, 3, 0, 2, 1, 4]
    # without readings nothing is urgent: the order is the plain one
    assert book.due(decision, now_s=1.0, stale_rack=fresh).tolist() == [0, 5, 2, 3, 1, 4]


def test_a_raise_below_present_draw_is_urgent_and_a_cut_above_it_is_not() -> None:
    """Urgency is about the draw, not the direction: caps lost on the rack (drawing 700 W) get a
    command that raises the last sent caps yet cuts the rack below its draw; a deep cut under
    which the GPUs already sit protects nothing now. Missing readings (NaN) and stale racks never
    count as urgent (a stale rack's reading is old), though a stale rack is still commanded,
    first among the lowering racks."""
    topo = generate_topology(4 * 32, site="t", servers_per_rack=4)
    book = _book(topo)
    caps = np.full(topo.n_gpus, 300.0)
    book.build(decision_with_caps(caps), np.arange(topo.n_racks), now_s=0.0)
    power_w = np.full(topo.n_gpus, 100.0)
    caps = caps.copy()
    caps[topo.rack_slice(0)] = 450.0  # raised, yet its GPUs draw 700: urgent
    power_w[topo.rack_slice(0)] = 700.0
    caps[topo.rack_slice(1)] = 150.0  # cut by 150 W, drawing 100: not urgent
    caps[topo.rack_slice(2)] = 200.0  # cut below a GPU with no reading: not urgent
    power_w[topo.rack_slice(2)] = np.nan
    caps[topo.rack_slice(3)] = 200.0  # would be urgent, but the rack is stale: first of the rest
    power_w[topo.rack_slice(3)] = 700.0
    stale = np.array([False, False, False, True])
    urgent, rest = book.due_lanes(
        decision_with_caps(caps), now_s=1.0, stale_rack=stale, power_w=power_w
    )
    assert urgent.tolist() == [0]
    assert rest.tolist() == [3, 1, 2]
    np.testing.assert_array_equal(
        book.urgent(decision_with_caps(caps), power_w)[[0, 1, 2]], [32 * 250.0, 32 * -50.0, 0.0]
    )


def test_build_of_scattered_racks_touches_only_their_rows() -> None:
    """Racks of different sizes, out of order: each command holds its own rack's rows."""
    topo = generate_topology(5 * 32, site="t", servers_per_rack=4)
    book = _book(topo)
    caps = np.arange(topo.n_gpus, dtype=np.float64) + 100.0
    messages = book.build(decision_with_caps(caps), np.array([4, 1, 3]), now_s=2.0)
    for rack, payload in messages:
        r = topo.rack_index[rack]
        np.testing.assert_allclose(
            wire.decode_command(payload, rack=rack).cap_w, caps[topo.rack_slice(r)]
        )
    sent = ~np.isnan(book.sent_cap_w)
    expected = np.zeros(topo.n_gpus, np.bool_)
    for r in (4, 1, 3):
        expected[topo.rack_slice(r)] = True
    np.testing.assert_array_equal(sent, expected)
    assert book.build(decision_with_caps(caps), np.array([], np.int64), now_s=3.0) == []
