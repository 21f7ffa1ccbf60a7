"""Through a real Mosquitto: an urgent command overtakes a fleet-wide burst of commands."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from controller import wire
from controller.daemon import build_runtime
from controller.mqtt_client import Client, topic_payload
from controller.policy_file import parse_policy
from controller.publisher import BULK_WINDOW, URGENT_SLICE, CommandPublisher, Lane, SendTimes
from controller.runtime import Runtime
from policies.decision import Decision
from tests.services import Mosquitto

SITE = "u"
RACKS = 1000  # of 32 GPUs: a burst of about eight bulk windows


def _decision(cap_w: np.ndarray) -> Decision:
    n = cap_w.size
    return Decision(
        cap_w=cap_w,
        sm_clock_max_mhz=np.full(n, 1980.0),
        demand_w=cap_w.copy(),
        tier=np.zeros(n, np.int8),
        budget_w=(),
        limit_w=(),
        infeasible=(),
        site_allowed_w=float("inf"),
        dvfs_saving_w=0.0,
    )


def _runtime(port: int) -> Runtime:
    policy = parse_policy(
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: {RACKS * 32}}}}}}}\n"
        f"mqtt: {{port: {port}, client_id: ctl}}\nmetrics: {{port: 0}}\n",
        source="t",
    )
    rt = build_runtime(policy, clock=time.time, version="t")
    rt.stale_rack = np.zeros(policy.topology.n_racks, np.bool_)
    rt.fleet.rack_last_seen_s[:] = time.monotonic()  # every rack has reported (none never heard)
    return rt


class _Lanes:
    """`SendTrace` that remembers which lane each rack's commands took."""

    def __init__(self) -> None:
        self.sends: list[tuple[Lane, list[str]]] = []

    def sent(self, lane: Lane, racks: list[str], times: SendTimes) -> None:
        assert times.tick_started_s <= times.diffed_s <= times.encoded_s <= times.published_s
        self.sends.append((lane, list(racks)))


async def test_an_urgent_command_is_not_queued_behind_a_fleet_wide_burst(
    mosquitto: Mosquitto,
) -> None:
    """Every rack is due (a new decision for the whole fleet) when one rack turns out to draw far
    over its new caps. Its command leaves at once on the urgent lane and reaches the agents with
    at most the bulk windows already handed to the client ahead of it, not behind the burst; the
    burst still arrives whole, every rack's command exactly once."""
    rt = _runtime(mosquitto.port)
    topo = rt.policy.topology
    trace = _Lanes()
    publisher = CommandPublisher(rt, asyncio.Lock(), clock=time.monotonic, trace=trace)
    hot = RACKS - 1  # the bulk lane sends it last of all
    hot_rows = topo.rack_slice(hot)
    async with (
        Client("127.0.0.1", mosquitto.port, identifier="ctl") as client,
        Client("127.0.0.1", mosquitto.port, identifier="agents") as agents,
    ):
        await agents.subscribe(wire.command_filter(SITE), qos=1)
        publisher.connected(client)
        bulk = asyncio.create_task(publisher.run())
        rt.fleet.power_w[:] = 200.0  # under every cap below: nothing urgent
        caps = np.full(topo.n_gpus, 500.0)
        rt.decision = _decision(caps)
        assert await publisher.send_due() == (0, RACKS)
        await asyncio.sleep(0)  # the bulk lane hands over its first window
        assert publisher.bulk_busy
        rt.fleet.power_w[hot_rows] = 700.0  # its GPUs lost their caps
        cut = caps.copy()
        cut[hot_rows] = 300.0
        rt.decision = _decision(cut)
        urgent, due = await publisher.send_due()
        assert urgent == 1
        assert 0 < due < RACKS  # the rest of the burst, still due
        got: list[str] = []
        hot_cap_w = np.empty(0)
        async with asyncio.timeout(30):
            while len(got) < RACKS:
                topic, payload = topic_payload(await agents.receive())
                got.append(wire.rack_from_topic(topic))
                if got[-1] == topo.racks.ids[hot]:
                    hot_cap_w = wire.decode_command(payload, rack=got[-1]).cap_w
        bulk.cancel()
    hot_id = topo.racks.ids[hot]
    assert sorted(got) == sorted(topo.racks.ids)  # each rack once: the hot one only urgently
    assert got.index(hot_id) <= 2 * BULK_WINDOW  # ahead of at least 6 of the burst's 8 windows
    lanes = [lane for lane, racks in trace.sends if hot_id in racks]
    assert lanes == ["urgent"]
    assert all(len(racks) <= BULK_WINDOW for lane, racks in trace.sends if lane == "bulk")
    np.testing.assert_array_equal(hot_cap_w, 300.0)
    assert publisher.bulk_pending == 0


async def test_a_fleet_wide_cut_goes_out_urgent_in_slices_ahead_of_the_bulk_lane(
    mosquitto: Mosquitto,
) -> None:
    """A cut below every rack's draw (say a demand-response limit) makes every command urgent:
    all leave from the tick, in slices, and no bulk window slips in between them."""
    rt = _runtime(mosquitto.port)
    topo = rt.policy.topology
    trace = _Lanes()
    publisher = CommandPublisher(rt, asyncio.Lock(), clock=time.monotonic, trace=trace)
    async with (
        Client("127.0.0.1", mosquitto.port, identifier="ctl") as client,
        Client("127.0.0.1", mosquitto.port, identifier="agents") as agents,
    ):
        await agents.subscribe(wire.command_filter(SITE), qos=1)
        publisher.connected(client)
        bulk = asyncio.create_task(publisher.run())
        rt.fleet.power_w[:] = 200.0
        rt.decision = _decision(np.full(topo.n_gpus, 500.0))
        assert await publisher.send_due() == (0, RACKS)  # a burst on the bulk lane
        await asyncio.sleep(0)
        rt.fleet.power_w[:] = 450.0
        rt.decision = _decision(np.full(topo.n_gpus, 400.0))
        urgent, due = await publisher.send_due()
        assert (urgent, due) == (RACKS, 0)
        bulk_sent = sum(len(racks) for lane, racks in trace.sends if lane == "bulk")
        got: list[tuple[str, float]] = []
        async with asyncio.timeout(30):
            while len(got) < RACKS + bulk_sent:
                _, payload = topic_payload(await agents.receive())
                cmd = wire.decode_command(payload)
                got.append((cmd.rack, float(cmd.cap_w[0])))
        assert publisher.bulk_pending == 0
        bulk.cancel()
    lanes = [lane for lane, _ in trace.sends]
    first_urgent = lanes.index("urgent")
    assert lanes[first_urgent:] == ["urgent"] * (RACKS // URGENT_SLICE + 1)
    assert max(len(racks) for _, racks in trace.sends) <= max(BULK_WINDOW, URGENT_SLICE)
    cut = [rack for rack, cap_w in got if cap_w == 400.0]
    assert sorted(cut) == sorted(topo.racks.ids)  # every rack got its cut, once
    # the bulk windows handed over before the cut arrive first; nothing of the burst after it
    assert 0 < bulk_sent <= BULK_WINDOW
    assert all(cap_w == 400.0 for _, cap_w in got[bulk_sent:])


async def test_a_lost_connection_mid_burst_stops_the_bulk_lane_and_the_next_one_resends(
    mosquitto: Mosquitto,
) -> None:
    """The connection goes mid-burst: the bulk lane drops what it was waiting for, and on the
    next connection every rack is sent its command again (the book made every rack due)."""
    rt = _runtime(mosquitto.port)
    topo = rt.policy.topology
    publisher = CommandPublisher(rt, asyncio.Lock(), clock=time.monotonic)
    rt.fleet.power_w[:] = 200.0
    rt.decision = _decision(np.full(topo.n_gpus, 500.0))
    async with Client("127.0.0.1", mosquitto.port, identifier="agents") as agents:
        await agents.subscribe(wire.command_filter(SITE), qos=1)
        bulk = asyncio.create_task(publisher.run())
        async with Client("127.0.0.1", mosquitto.port, identifier="ctl") as client:
            publisher.connected(client)
            await publisher.send_due()
            await asyncio.sleep(0)
            assert publisher.bulk_busy
            publisher.disconnected()
            rt.book.invalidate()
            await asyncio.sleep(0.05)
            assert not publisher.bulk_busy
            assert not bulk.done()  # the lane survives a lost connection
        async with Client("127.0.0.1", mosquitto.port, identifier="ctl") as client:
            publisher.connected(client)
            assert await publisher.send_due() == (0, RACKS)
            seen: set[str] = set()
            async with asyncio.timeout(30):
                while len(seen) < RACKS:
                    seen.add(wire.rack_from_topic(topic_payload(await agents.receive())[0]))
            while publisher.bulk_busy:
                await asyncio.sleep(0.01)
        bulk.cancel()
    assert seen == set(topo.racks.ids)
