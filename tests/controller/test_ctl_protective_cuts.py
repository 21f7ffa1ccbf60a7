"""Protective cuts: a rack over its caps in force hears them again between ticks.

The daemon runs against a real Mosquitto with a tick period far longer than the cut may take, so
a command that arrives before the next tick can only have come from the protective scan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import pytest

from controller import wire
from controller.command_book import CommandBook
from controller.daemon import Controller, build_runtime
from controller.mqtt_client import Client, topic_payload
from controller.policy_file import parse_policy
from controller.protect import ProtectiveCuts
from controller.publisher import CommandPublisher, Lane, SendTimes
from policies.topology import generate_topology
from tests.controller.test_ctl_command_book import decision_with_caps
from tests.integration.harness import running, wait_until
from tests.services import Mosquitto

pytestmark = pytest.mark.integration

SITE = "pc"
RACK_GPUS = 32
RACKS = 4
TICK_S = 2.0
MIN_INTERVAL_S = 1.0


def _policy(port: int, *, scan: str = "0.005", workers: int = 0) -> str:
    return (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: {RACKS * RACK_GPUS}}}}}}}\n"
        "capping: {deadband_w: 5}\n"
        f"control: {{tick_period_s: {TICK_S}, command_ttl_s: 60, stale_after_s: 60,"
        f" protect_scan_s: {scan}, protect_min_interval_s: {MIN_INTERVAL_S}}}\n"
        f"mqtt: {{port: {port}, client_id: {SITE}-ctl}}\n"
        f"ingest: {{workers: {workers}}}\n"
        "metrics: {port: 0}\n"
    )


def _telemetry(
    rack: str, seq: int, power_w: float | np.ndarray, cap_w: float | np.ndarray
) -> bytes:
    n = RACK_GPUS
    power = np.broadcast_to(np.asarray(power_w, np.float64), (n,)).copy()
    return wire.encode_telemetry(
        wire.Telemetry(
            rack=rack,
            seq=seq,
            ts_s=time.time(),
            power_w=power,
            sm_clock_mhz=np.full(n, 1800.0),
            util=np.full(n, 0.9),
            mem_util=np.full(n, 0.3),
            temp_c=np.full(n, 60.0),
            cap_w=np.broadcast_to(np.asarray(cap_w, np.float64), (n,)).copy(),
            classes=("training",),
            class_idx=np.zeros(n, np.int64),
            rack_power_w=float(power.sum()),
        )
    )


class _Lanes:
    """`SendTrace`: each send's lane and racks, with the tick count when it left."""

    def __init__(self) -> None:
        self.sends: list[tuple[Lane, list[str]]] = []

    def sent(self, lane: Lane, racks: Sequence[str], times: SendTimes) -> None:
        assert times.tick_started_s <= times.decided_s <= times.encoded_s <= times.published_s
        self.sends.append((lane, list(racks)))

    def protective(self, rack: str) -> int:
        return sum(rack in racks for lane, racks in self.sends if lane == "protect")


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "ingest-worker"])
async def test_a_rack_over_its_caps_in_force_is_cut_before_the_next_tick(
    mosquitto: Mosquitto, workers: int
) -> None:
    """A rack whose GPUs draw 700 W while its agent reports caps of 700 W (it lost the caps it
    was sent) hears its caps in force again long before the next tick: the same or lower caps,
    never higher. A rack drawing a little over caps its agent does hold (the device's own
    overshoot) is not cut, nor is a rack under its caps; the hot rack is not cut again within
    `protect_min_interval_s`, and is once that has passed. The same with an ingest worker
    process writing the fleet arrays (its receive times are on the daemon's monotonic clock)."""
    trace = _Lanes()
    text = _policy(mosquitto.port, workers=workers)
    controller = Controller(parse_policy(text, source="t"), trace=trace)
    rt = controller.runtime
    ids = rt.policy.topology.racks.ids
    hot, holding, calm = ids[0], ids[1], ids[2]
    topo = rt.policy.topology
    async with (
        Client("127.0.0.1", mosquitto.port, identifier="agents") as agents,
        running(controller),
    ):
        await agents.subscribe(wire.command_filter(SITE), qos=1)
        await wait_until(lambda: rt.subscribed)
        if controller.pool is not None:
            pool = controller.pool
            await wait_until(lambda: pool.subscribed() == workers)
        for rack in ids:
            await agents.publish(
                wire.telemetry_topic(SITE, rack), _telemetry(rack, 1, 250.0, 700.0)
            )
        await wait_until(lambda: rt.book.sent_total >= RACKS, 3 * TICK_S)
        # fresh from a tick: the next one is TICK_S away
        ticks = rt.ticks.ticks
        await wait_until(lambda: rt.ticks.ticks > ticks, 2 * TICK_S)
        ticks = rt.ticks.ticks
        sent_w = rt.book.sent_cap_w.copy()
        assert np.all(sent_w < 690.0)  # the decision capped every GPU below what `hot` draws
        hold_w = sent_w[topo.rack_slice(topo.rack_index[holding])]
        seq_before = int(rt.book.seq[topo.rack_index[hot]])
        started_s = time.monotonic()
        await agents.publish(wire.telemetry_topic(SITE, hot), _telemetry(hot, 2, 700.0, 700.0))
        await agents.publish(
            wire.telemetry_topic(SITE, holding), _telemetry(holding, 2, hold_w + 40.0, hold_w)
        )
        await agents.publish(wire.telemetry_topic(SITE, calm), _telemetry(calm, 2, 100.0, 700.0))
        async with asyncio.timeout(TICK_S):
            while True:
                topic, payload = topic_payload(await agents.receive())
                cmd = wire.decode_command(payload)
                if wire.rack_from_topic(topic) == hot and cmd.seq > seq_before:
                    break
        latency_s = time.monotonic() - started_s
        assert rt.ticks.ticks == ticks, "the cut waited for a tick"
        assert latency_s < TICK_S / 2
        hot_rows = topo.rack_slice(topo.rack_index[hot])
        np.testing.assert_allclose(cmd.cap_w, sent_w[hot_rows], atol=0.06)  # never higher
        assert trace.protective(hot) == 1
        # reporting over again at once: within the interval it is not cut again
        await agents.publish(wire.telemetry_topic(SITE, hot), _telemetry(hot, 3, 700.0, 700.0))
        await asyncio.sleep(0.3)
        assert trace.protective(hot) == 1
        assert trace.protective(holding) == trace.protective(calm) == 0
        await asyncio.sleep(MIN_INTERVAL_S)
        await agents.publish(wire.telemetry_topic(SITE, hot), _telemetry(hot, 4, 700.0, 700.0))
        await wait_until(lambda: trace.protective(hot) == 2, TICK_S)
        assert controller.protect.sent_total == rt.book.protective_total == 2


async def test_without_the_scan_the_cut_waits_for_the_tick(mosquitto: Mosquitto) -> None:
    """`protect_scan_s` unset: the same hot rack hears nothing until the next tick, which
    sends its cut on the urgent lane; the scan is what made the difference above."""
    trace = _Lanes()
    text = _policy(mosquitto.port, scan="null")
    controller = Controller(parse_policy(text, source="t"), trace=trace)
    rt = controller.runtime
    hot = rt.policy.topology.racks.ids[0]
    async with (
        Client("127.0.0.1", mosquitto.port, identifier="agents") as agents,
        running(controller),
    ):
        await wait_until(lambda: rt.subscribed)
        for rack in rt.policy.topology.racks.ids:
            await agents.publish(
                wire.telemetry_topic(SITE, rack), _telemetry(rack, 1, 250.0, 700.0)
            )
        await wait_until(lambda: rt.book.sent_total >= RACKS, 3 * TICK_S)
        ticks = rt.ticks.ticks
        await wait_until(lambda: rt.ticks.ticks > ticks, 2 * TICK_S)
        ticks = rt.ticks.ticks
        n_sends = len(trace.sends)
        await agents.publish(wire.telemetry_topic(SITE, hot), _telemetry(hot, 2, 700.0, 700.0))
        await asyncio.sleep(0.3)
        assert rt.ticks.ticks == ticks
        assert not any(hot in racks for _, racks in trace.sends[n_sends:])
        await wait_until(lambda: any(lane == "urgent" and hot in r for lane, r in trace.sends))
        assert rt.ticks.ticks > ticks
        assert controller.protect.sent_total == 0


def test_caps_in_force_are_the_lower_of_sent_and_decided() -> None:
    """Per GPU, the lower of the last sent and the newest decided cap and clock ceiling; where
    nothing was sent, the decided ones. Overdraw counts only where the agent holds more."""
    topo = generate_topology(64)
    book = CommandBook(topo, ttl_s=30.0, refresh_frac=0.5, deadband_w=5.0)
    n = topo.n_gpus
    first = decision_with_caps(np.full(n, 400.0), 1800.0)
    racks = np.arange(topo.n_racks)
    book.build(first, racks[:1], now_s=0.0)
    newer = decision_with_caps(np.linspace(300.0, 500.0, n), 1900.0)
    cap_w, clock_mhz = book.in_force(newer, racks)
    rack0 = topo.rack_slice(0)
    np.testing.assert_array_equal(cap_w[rack0], np.minimum(400.0, newer.cap_w[rack0]))
    np.testing.assert_array_equal(clock_mhz[rack0], 1800.0)
    rest = np.arange(rack0.stop, n)
    np.testing.assert_array_equal(cap_w[rest], newer.cap_w[rest])  # never sent: decided
    power_w = np.full(n, 450.0)
    held_w = cap_w.copy()  # every agent holds its caps in force: nothing a command fixes
    assert not book.overdrawn(newer, racks, power_w=power_w, reported_cap_w=held_w).any()
    lost_w = np.full(n, 700.0)
    over_w = book.overdrawn(newer, racks, power_w=power_w, reported_cap_w=lost_w)
    np.testing.assert_allclose(
        over_w,
        np.array(
            [max(0.0, float(np.max(450.0 - cap_w[topo.rack_slice(r)]))) for r in racks.tolist()]
        ),
    )
    built = book.build_in_force(newer, racks[:1], now_s=1.0)
    sent = wire.decode_command(built[0][1])
    np.testing.assert_allclose(sent.cap_w, cap_w[rack0], atol=0.06)


def test_a_command_on_its_way_is_not_resent() -> None:
    """An agent reporting an older command than the one just sent is still applying it: no
    cut. One that reports no command (it restarted), or whose newer command left long enough
    ago to have landed, is cut."""
    policy = parse_policy(_policy(1883), source="t")
    rt = build_runtime(policy, clock=time.time, version="t")
    topo = policy.topology
    cuts = ProtectiveCuts(
        rt, CommandPublisher(rt, asyncio.Lock(), clock=time.monotonic), clock=time.monotonic
    )
    n = topo.n_gpus
    rt.decision = decision_with_caps(np.full(n, 400.0))
    racks = np.arange(topo.n_racks)
    now_s = 100.0
    rt.book.build(rt.decision, racks, now_s=now_s)
    rt.fleet.power_w[:] = 600.0  # every GPU far over its 400 W cap, its agent holding 700 W
    rt.fleet.cap_w[:] = 700.0
    seq = rt.book.seq.copy()
    rt.ingest.agents.cmd_seq[:] = [seq[0] - 1, -1, seq[2], seq[3] - 1]
    rt.fleet.rack_last_seen_s[:] = now_s + 0.05
    chosen, over_w = cuts.candidates(now_s + 0.05)
    assert sorted(chosen.tolist()) == [1, 2]  # 0 and 3 are still applying their command
    np.testing.assert_allclose(over_w, 200.0)
    rt.fleet.rack_last_seen_s[[0, 3]] = now_s + MIN_INTERVAL_S
    chosen, _ = cuts.candidates(now_s + MIN_INTERVAL_S)
    assert sorted(chosen.tolist()) == [0, 3]  # long enough for it to land: lost, so cut


async def test_a_cut_goes_between_urgent_slices_but_never_overtakes_one(
    mosquitto: Mosquitto,
) -> None:
    """A fleet-wide urgent send goes out in slices under the daemon's lock. A protective cut does
    not wait for that lock: for a rack already handed over it leaves between two slices; a rack
    whose urgent command is built but not yet handed over is left alone, so no agent ever sees
    an older sequence after a newer one."""
    racks_n = 1000
    policy = parse_policy(
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: {racks_n * RACK_GPUS}}}}}}}\n"
        f"mqtt: {{port: {mosquitto.port}, client_id: ctl}}\nmetrics: {{port: 0}}\n",
        source="t",
    )
    rt = build_runtime(policy, clock=time.time, version="t")
    topo = policy.topology
    rt.stale_rack = np.zeros(topo.n_racks, np.bool_)
    rt.fleet.rack_last_seen_s[:] = time.monotonic()
    trace = _Lanes()
    publisher = CommandPublisher(rt, asyncio.Lock(), clock=time.monotonic, trace=trace)
    async with (
        Client("127.0.0.1", mosquitto.port, identifier="ctl") as client,
        Client("127.0.0.1", mosquitto.port, identifier="agents") as agents,
    ):
        await agents.subscribe(wire.command_filter(SITE), qos=1)
        publisher.connected(client)
        rt.fleet.power_w[:] = 450.0
        rt.decision = decision_with_caps(
            np.full(topo.n_gpus, 400.0)
        )  # every rack cut below its draw
        sending = asyncio.create_task(publisher.send_due())
        while not 0 < publisher.urgent_unsent.size < racks_n:
            await asyncio.sleep(0)
        assert not sending.done()
        unsent = int(publisher.urgent_unsent[-1])
        handed = int(np.setdiff1d(np.arange(racks_n), publisher.urgent_unsent)[0])
        book = rt.book
        both = np.array([handed, unsent])
        assert await publisher.send_in_force(book, both, scan_started_s=0, detected_s=0) == 1
        assert not sending.done()  # it did not wait for the urgent send to finish
        assert await sending == (racks_n, 0)
        seqs: dict[str, list[int]] = {}
        async with asyncio.timeout(30):
            while sum(map(len, seqs.values())) < racks_n + 1:
                cmd = wire.decode_command(topic_payload(await agents.receive())[1])
                seqs.setdefault(cmd.rack, []).append(cmd.seq)
    ids = topo.racks.ids
    assert len(seqs[ids[handed]]) == 2
    assert seqs[ids[unsent]] == seqs[ids[unsent]][:1]
    assert all(s == sorted(s) and len(set(s)) == len(s) for s in seqs.values())
    assert [lane for lane, racks in trace.sends if ids[handed] in racks] == ["urgent", "protect"]
