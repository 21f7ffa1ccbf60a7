"""The measuring half of `bench.e2e`: one daemon over one fleet, its probes and its samples.

`measure` runs a `Controller` in this process with a send trace, has every rack report once,
then samples (see `bench.e2e` for what a sample is) while the site limit swings. Samples come
back raw, so the runs of several shards (processes) can be pooled before quantiles are taken.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import structlog

from controller import wire
from controller.daemon import Controller
from controller.mqtt_client import Client, topic_payload
from controller.policy_file import parse_policy
from controller.publisher import Lane, SendTimes
from policies.decision import Limits
from policies.fleet import FleetState
from policies.pipeline import decide
from policies.topology import Topology

RACK_GPUS = 32
#: The fleet's draw per GPU: 45 W or more under its caps at both levels of the swing, so the
#: swings' commands are not urgent.
BASE_W = 250.0
STAGES = ("ingest", "wait", "decide", "carry", "diff", "queue", "encode", "publish", "broker")
#: A sampled rack rests this long before it is used again: the decision holds a GPU's demand
#: for a few seconds, so a rack used sooner may not move at all. Units: s.
REST_S = 8.0
#: No answering command within this: the sample is `unchanged` or `missed`. Units: s.
ANSWER_S = 5.0


def policy_text(port: int, site: str, racks: int, tick_s: float) -> str:
    gpus = racks * RACK_GPUS
    return (
        f"site: {{name: {site}, topology: {{generate: {{gpus: {gpus}}}}}}}\n"
        "capping: {deadband_w: 5, raise_rate_w_per_s: 100000}\n"
        f"control: {{tick_period_s: {tick_s}, command_ttl_s: 3600, stale_after_s: 3600}}\n"
        f"mqtt: {{port: {port}, client_id: {site}-controller}}\n"
        "metrics: {port: 0}\nlogging: {level: warning}\n"
    )


def telemetry(rack: str, seq: int, power_w: float | np.ndarray, cap_w: np.ndarray) -> bytes:
    n = RACK_GPUS
    power = np.broadcast_to(np.asarray(power_w, np.float64), (n,)).copy()
    return wire.encode_telemetry(
        wire.Telemetry(
            rack=rack,
            seq=seq,
            ts_s=time.time(),
            power_w=power,
            sm_clock_mhz=np.full(n, 1800.0),
            util=np.full(n, 0.95 if power.mean() > BASE_W else 0.6),
            mem_util=np.full(n, 0.3),
            temp_c=np.full(n, 60.0),
            cap_w=cap_w,
            classes=("training",),
            class_idx=np.zeros(n, np.int64),
            rack_power_w=float(power.sum()) + 2000.0,
        )
    )


@dataclass(frozen=True, slots=True)
class Sample:
    """One answered telemetry message: total and per-stage latency (ms), lane, burst, and when
    its telemetry was sent (`time.monotonic()`, s)."""

    latency_ms: float
    lane: Lane
    in_burst: bool
    stages_ms: tuple[float, ...]
    sent_s: float


Outcome = Sample | Literal["unchanged", "missed"]


@dataclass(eq=False)
class _Watch:
    """What the bench knows of one probed rack; the daemon's trace and the probe fill it."""

    index: int
    seq: int = 1  # telemetry sequence
    ingested_s: float = -np.inf
    ingested_wall_s: float = -np.inf  # the daemon's clock (it stamps ticks with it)
    used_s: float = -np.inf
    sends: dict[int, tuple[Lane, SendTimes, bool]] = field(default_factory=dict)
    arrived: dict[int, float] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)


class _Trace:
    """`controller.publisher.SendTrace`: the sends to watched racks, by command sequence."""

    def __init__(self) -> None:
        self.watched: dict[str, _Watch] = {}
        self.seq: Callable[[int], int] = lambda _: 0
        self.bulk_busy: Callable[[], bool] = lambda: False
        self.commands: dict[Lane, int] = {"urgent": 0, "bulk": 0, "protect": 0}

    def sent(self, lane: Lane, racks: Sequence[str], times: SendTimes) -> None:
        self.commands[lane] += len(racks)
        for rack in self.watched.keys() & set(racks):
            w = self.watched[rack]
            if len(w.sends) > 64:
                w.sends.clear()
            w.sends[self.seq(w.index)] = (lane, times, lane != "bulk" and self.bulk_busy())


class _TimedDecider:
    """`policies.pipeline.decide`, remembering when the recent calls started and ended."""

    def __init__(self) -> None:
        #: (the tick's `now_s`, start, end): the tick's clock is read before its snapshot.
        self.calls: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=512)

    def __call__(self, topology: Topology, fleet: FleetState, **kwargs: Any) -> Any:
        start_s = time.monotonic()
        out = decide(topology, fleet, **kwargs)
        self.calls.append((float(kwargs["now_s"]), start_s, time.monotonic()))
        return out

    def first_after(self, wall_s: float) -> tuple[float, float] | None:
        """(start, end) of the first decision whose snapshot was taken after `wall_s`."""
        return next((c[1:] for c in list(self.calls) if c[0] >= wall_s), None)


def _answer(w: _Watch, sent_s: float, decider: _TimedDecider) -> Sample | None:
    """The first arrived command built by a tick whose snapshot held the telemetry.

    Stages: the first decision that saw the telemetry (for a protective cut, its scan); `carry`
    is the time until the decision
    the command was built from (0 but for the hop back to the event loop, unless the rack was
    still unsent when later ticks replanned the bulk lane).
    """
    for seq, arrived_s in sorted(w.arrived.items()):
        send = w.sends.get(seq)
        if send is None or w.ingested_s < sent_s or send[1].tick_started_s < w.ingested_s:
            continue  # not traced, or decided before the daemon read the telemetry
        lane, t, in_burst = send
        # A protective cut decides nothing: its scan stands where a tick's decision would.
        first = (t.tick_started_s, t.decided_s)
        if lane != "protect":
            first = decider.first_after(w.ingested_wall_s) or first
        marks = [sent_s, w.ingested_s, *first, t.decided_s, t.diffed_s]
        marks += [t.build_started_s, t.encoded_s, t.published_s, arrived_s]
        stages = tuple(1e3 * (b - a) for a, b in itertools.pairwise(marks))
        return Sample(1e3 * (arrived_s - sent_s), lane, in_burst, stages, sent_s)
    return None


async def _sample(
    probe: Client,
    site: str,
    rack: str,
    w: _Watch,
    decider: _TimedDecider,
    *,
    power_w: float | np.ndarray,
    cap_w: np.ndarray,
) -> Outcome:
    """Publish one telemetry message and wait for the command that answers it."""
    w.seq += 1
    w.arrived.clear()
    sent_s = time.monotonic()
    await probe.publish(wire.telemetry_topic(site, rack), telemetry(rack, w.seq, power_w, cap_w))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ANSWER_S):
            while (got := _answer(w, sent_s, decider)) is None:
                w.event.clear()
                await w.event.wait()
            return got
    # a command decided after the telemetry was sent but never arrived, or none was due
    late = any(t.tick_started_s >= w.ingested_s >= sent_s for _, t, _ in w.sends.values())
    return "missed" if late else "unchanged"


@dataclass(eq=False, kw_only=True)
class Result:
    """One daemon's run: raw samples and counters."""

    regular: list[Sample] = field(default_factory=list)
    urgent: list[Sample] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    #: (start, end, commands) of each swing's burst: `time.monotonic()` s; end inf while on.
    swings: list[tuple[float, float, int]] = field(default_factory=list)


async def measure(port: int, site: str, racks: int, args: dict[str, Any]) -> Result:
    """Run the daemon on `racks` racks under `site` and take `args`' samples."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    tick_s = float(args["tick_period"])
    policy = parse_policy(policy_text(port, site, racks, tick_s), source="<e2e>")
    trace = _Trace()
    decider = _TimedDecider()
    controller = Controller(policy, trace=trace, decider=decider)
    rt, publisher = controller.runtime, controller.publisher
    trace.seq = lambda r: int(rt.book.seq[r])
    trace.bulk_busy = lambda: publisher.bulk_busy
    topo = policy.topology
    ids = topo.racks.ids
    rng = np.random.default_rng(0)
    order = rng.permutation(racks)
    pool = max(1, min(256, racks // 8))
    regular_pool = [ids[r] for r in order[:pool]]
    urgent_pool = [ids[r] for r in order[pool : 2 * pool]]
    trace.watched = {rack: _Watch(topo.rack_index[rack]) for rack in regular_pool + urgent_pool}
    handle = rt.ingest.handle

    def stamped(topic: str, payload: bytes) -> bool:
        ok = handle(topic, payload)
        w = trace.watched.get(wire.rack_from_topic(topic))
        if w is not None:
            w.ingested_s, w.ingested_wall_s = time.monotonic(), time.time()
        return ok

    rt.ingest.handle = stamped  # type: ignore[method-assign]  # the bench's own instrument
    result = Result(outcomes={"unchanged": 0, "missed": 0, "urgent_unchanged": 0})
    result.outcomes["urgent_missed"] = 0
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    no_cap = np.full(RACK_GPUS, 700.0)
    # The probe uses the daemon's client: its socket sends at once (no Nagle delay behind an
    # ACK), and it reads many packets per wake-up, so receiving costs the shared loop little.
    async with Client("127.0.0.1", port, identifier=f"{site}-probe") as probe:
        async with asyncio.timeout(30):
            while not rt.subscribed:
                await asyncio.sleep(0.01)
        for r, rack in enumerate(ids):
            await probe.publish(
                wire.telemetry_topic(site, rack), telemetry(rack, 1, BASE_W, no_cap)
            )
            if r % 500 == 0:
                await asyncio.sleep(0)
        arrival_s = time.monotonic()
        async with asyncio.timeout(300):
            while (
                rt.fleet.stale_racks(time.monotonic(), 3600.0).any() or rt.book.sent_total < racks
            ):
                await asyncio.sleep(0.05)
            sent, quiet_since = rt.book.sent_total, time.monotonic()
            while time.monotonic() - quiet_since < 1.0:  # the arrival burst is over
                await asyncio.sleep(0.05)
                if rt.book.sent_total != sent or publisher.bulk_busy:
                    sent, quiet_since = rt.book.sent_total, time.monotonic()
        result.counters["settle_s"] = round(time.monotonic() - arrival_s, 1)
        result.counters["arrival_commands"] = rt.book.sent_total
        # QoS 0 to the probe: with QoS 1 the broker would hold the probe's share of each swing in
        # its per-client in-flight window, and a sample's command would queue behind it there.
        await probe.subscribe([(wire.command_topic(site, r), 0) for r in trace.watched])
        trace.commands = {"urgent": 0, "bulk": 0, "protect": 0}

        async def read() -> None:
            while True:
                topic, payload = topic_payload(await probe.receive())
                rack = wire.rack_from_topic(topic)
                cmd = wire.decode_command(payload, rack=rack)
                w = trace.watched[rack]
                w.arrived[cmd.seq] = time.monotonic()
                w.event.set()

        def caps(rack: str) -> np.ndarray:
            sent_w = rt.book.sent_cap_w[topo.rack_slice(topo.rack_index[rack])]
            return np.where(np.isnan(sent_w), 700.0, sent_w)

        swung = asyncio.Event()
        contract = rt.limits = Limits()
        if rt.decision is None:
            raise RuntimeError("no decision after every rack reported")
        low = Limits(site_limit_w=float(args["swing_depth"]) * rt.decision.site_allowed_w)
        ticks0, tick_sum0, overruns0 = rt.ticks.ticks, rt.ticks.duration_sum_s, rt.ticks.overruns
        swing_every = float(args["swing_every"])

        async def swing() -> None:
            while swing_every > 0:
                await asyncio.sleep(swing_every)
                before, start_s = rt.book.sent_total, time.monotonic()
                ticks = rt.ticks.ticks
                rt.limits = low if rt.limits is contract else contract
                result.swings.append((start_s, np.inf, 0))
                swung.set()
                # the burst: from the first tick that saw the new limit until the bulk lane is idle
                while rt.ticks.ticks < ticks + 2 or publisher.bulk_busy:
                    await asyncio.sleep(0.01)
                sent = rt.book.sent_total - before
                result.swings[-1] = (start_s, time.monotonic(), sent)

        async def use(rack: str, power_w: float | np.ndarray, cap_w: np.ndarray) -> Outcome:
            w = trace.watched[rack]
            await asyncio.sleep(max(0.0, w.used_s + REST_S - time.monotonic()))
            got = await _sample(probe, site, rack, w, decider, power_w=power_w, cap_w=cap_w)
            w.seq += 1  # back to the fleet's draw, under its caps
            cap = caps(rack)
            payload = telemetry(rack, w.seq, np.minimum(BASE_W, cap), cap)
            await probe.publish(wire.telemetry_topic(site, rack), payload)
            w.used_s = time.monotonic()
            return got

        async def sample_regular() -> None:
            for k in range(10**9):
                if len(result.regular) >= args["samples"]:
                    return
                rack = regular_pool[k % len(regular_pool)]
                await asyncio.sleep(float(rng.uniform(0, tick_s)))  # a random tick phase
                got = await use(rack, caps(rack), caps(rack))  # busy at its caps
                if isinstance(got, Sample):
                    result.regular.append(got)
                else:
                    result.outcomes[got] += 1

        async def one_urgent(rack: str, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            got = await use(rack, 700.0, no_cap)  # its caps are lost: every GPU at 700 W
            if isinstance(got, Sample):
                result.urgent.append(got)
            else:
                result.outcomes[f"urgent_{got}"] += 1

        async def sample_urgent() -> None:
            k, per_swing = 0, int(args["urgent_per_swing"])
            while len(result.urgent) < args["urgent_samples"]:
                if swing_every > 0:
                    await swung.wait()
                    swung.clear()
                # spread over the time the last swing's burst took to go out
                last = result.swings[-2:-1] if result.swings else []  # the last finished
                spread_s = max(tick_s, last[0][1] - last[0][0] if last else 0.1)
                batch = [urgent_pool[(k + j) % len(urgent_pool)] for j in range(per_swing)]
                k += per_swing
                async with asyncio.TaskGroup() as group:
                    for rack in batch:
                        group.create_task(one_urgent(rack, float(rng.uniform(0, spread_s))))
                if swing_every <= 0:
                    await asyncio.sleep(tick_s)

        reader = asyncio.create_task(read())
        swinger = asyncio.create_task(swing())
        sampling_s = time.monotonic()
        await asyncio.gather(sample_regular(), sample_urgent())
        result.counters["sampling_s"] = round(time.monotonic() - sampling_s, 1)
        swinger.cancel()
        reader.cancel()
    stop.set()
    await task
    ticks = max(rt.ticks.ticks - ticks0, 1)
    result.counters.update(
        protect_commands=trace.commands["protect"],
        urgent_commands=trace.commands["urgent"],
        bulk_commands=trace.commands["bulk"],
        ticks=ticks,
        tick_sum_s=rt.ticks.duration_sum_s - tick_sum0,
        tick_overruns=rt.ticks.overruns - overruns0,
    )
    return result


def measure_in_process(port: int, site: str, racks: int, args: dict[str, Any]) -> Result:
    """`measure` in a fresh event loop: the entry point of a shard's process."""
    return asyncio.run(measure(port, site, racks, args))
