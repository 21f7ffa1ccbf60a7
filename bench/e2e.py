"""`rheostat bench e2e`: latency from a telemetry publish that changes the decision to the command.

A real Mosquitto, the daemon (`controller.daemon.Controller`, in this process) on a fleet of
`--racks` racks of 32 GPUs whose site contract binds, and a probe client. Every rack reports once
(the stale timeout is long, so the fleet stays fresh without a full telemetry stream); then the
probe repeatedly flips one rack between idle and full draw, which moves that rack's caps by far
more than the deadband, and times publish → arrival of a command for that rack issued after the
publish. The latency includes waiting for the next tick (`--tick-period`), the decision, and the
broker's two hops. Samples start after the command burst of the fleet's arrival has died down
(`burst_commands`, `settle_s`); `sample_tick_mean_ms` is the tick time while sampling. Needs the
`mosquitto` binary.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiomqtt
import numpy as np

from bench.ingest import mosquitto
from controller import wire
from controller.daemon import Controller
from controller.mqtt_client import NODELAY
from controller.policy_file import parse_policy

NAME = "e2e"
HELP = "latency from a decision-changing telemetry publish to the command's arrival"
DEFAULT_ARGS = ["--racks", "1000", "10000"]
SITE = "e2e"
RACK_GPUS = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--racks", type=int, nargs="+", default=[10_000])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--tick-period", type=float, default=0.05, help="seconds")


def _policy_text(port: int, racks: int, tick_s: float) -> str:
    gpus = racks * RACK_GPUS
    # the generated site contract (80 % of nameplate) binds at 400 W a GPU, so a rack's
    # demand moving between 100 W and 700 W a GPU moves its caps
    return (
        f"site: {{name: {SITE}, topology: {{generate: {{gpus: {gpus}}}}}}}\n"
        "capping: {deadband_w: 5, raise_rate_w_per_s: 100000}\n"
        f"control: {{tick_period_s: {tick_s}, command_ttl_s: 3600, stale_after_s: 3600}}\n"
        f"mqtt: {{port: {port}, client_id: e2e-controller}}\n"
        "metrics: {port: 0}\nlogging: {level: warning}\n"
    )


def _telemetry(rack: str, seq: int, power_w: float) -> bytes:
    n = RACK_GPUS
    return wire.encode_telemetry(
        wire.Telemetry(
            rack=rack,
            seq=seq,
            ts_s=time.time(),
            power_w=np.full(n, power_w),
            sm_clock_mhz=np.full(n, 1800.0),
            util=np.full(n, 0.9 if power_w > 200 else 0.05),
            mem_util=np.full(n, 0.3),
            temp_c=np.full(n, 60.0),
            cap_w=np.full(n, 700.0),
            classes=("training",),
            class_idx=np.zeros(n, np.int64),
            rack_power_w=power_w * n + 2000.0,
        )
    )


async def _measure(port: int, racks: int, args: argparse.Namespace) -> dict[str, Any]:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # "pending publish calls" during the burst
    policy = parse_policy(_policy_text(port, racks, args.tick_period), source="<e2e>")
    controller = Controller(policy)
    rt = controller.runtime
    ids = policy.topology.racks.ids
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    latencies_ms: list[float] = []
    # Like the daemon's, the probe's socket sends at once (paho leaves Nagle's algorithm on):
    # otherwise a publish behind a PUBACK can wait up to 40 ms for a delayed ACK.
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="e2e-probe", socket_options=(NODELAY,)
    ) as probe:
        async with asyncio.timeout(30):
            while not rt.subscribed:
                await asyncio.sleep(0.01)
        for r, rack in enumerate(ids):
            await probe.publish(wire.telemetry_topic(SITE, rack), _telemetry(rack, 1, 400.0))
            if r % 500 == 0:
                await asyncio.sleep(0)
        arrival_s = time.monotonic()
        async with asyncio.timeout(120):
            while (
                rt.fleet.stale_racks(time.monotonic(), 3600.0).any() or rt.book.sent_total < racks
            ):
                await asyncio.sleep(0.05)
            # While racks come in, each tick frees the worst-case reserve of the racks that just
            # reported, so the caps of every fresh rack move and each is commanded again: the
            # burst lasts as long as arrival does. Samples start once a whole second passes
            # without a command, so they time flips, not that backlog.
            sent, quiet_since = rt.book.sent_total, time.monotonic()
            while time.monotonic() - quiet_since < 1.0:
                await asyncio.sleep(0.05)
                if rt.book.sent_total != sent:
                    sent, quiet_since = rt.book.sent_total, time.monotonic()
        settle_s = time.monotonic() - arrival_s
        burst_commands = rt.book.sent_total
        ticks_before, tick_s_before = rt.ticks.ticks, rt.ticks.duration_sum_s
        # Subscribed only now: receiving the burst (a command to every rack, many times over)
        # would load this process, which the daemon shares, with work that is not the daemon's.
        await probe.subscribe(wire.command_filter(SITE), qos=1)
        rng = np.random.default_rng(0)
        seq = 1
        idle: set[str] = set()
        missed = 0
        for _ in range(args.samples):
            # a busy rack going idle frees its share; an idle one coming back takes it again
            rack = ids[int(rng.integers(len(ids)))]
            seq += 1
            power_w = 700.0 if rack in idle else 100.0
            idle.symmetric_difference_update({rack})
            await asyncio.sleep(float(rng.uniform(0, args.tick_period)))  # random tick phase
            sent_s = time.time()
            await probe.publish(wire.telemetry_topic(SITE, rack), _telemetry(rack, seq, power_w))
            try:
                async with asyncio.timeout(5):
                    async for message in probe.messages:
                        if wire.rack_from_topic(str(message.topic)) != rack:
                            continue
                        cmd = wire.decode_command(bytes(message.payload))
                        if cmd.issued_at_s >= sent_s:
                            latencies_ms.append((time.time() - sent_s) * 1e3)
                            break
            except TimeoutError:
                missed += 1  # no command within 5 s: reported, never hidden
    stop.set()
    await task
    enough = len(latencies_ms) >= 2
    q = statistics.quantiles(latencies_ms, n=100) if enough else [float("nan")] * 99
    return {
        "racks": racks,
        "gpus": racks * RACK_GPUS,
        "tick_period_s": args.tick_period,
        "samples": len(latencies_ms),
        "missed": missed,
        "p50_ms": round(statistics.median(latencies_ms), 1) if enough else None,
        "p99_ms": round(q[98], 1) if enough else None,
        "tick_mean_ms": round(1e3 * rt.ticks.duration_sum_s / max(rt.ticks.ticks, 1), 1),
        "tick_overruns": rt.ticks.overruns,
        "ticks": rt.ticks.ticks,
        "commands_sent": rt.book.sent_total,
        "burst_commands": burst_commands,
        "settle_s": round(settle_s, 1),
        "sample_tick_mean_ms": round(
            1e3 * (rt.ticks.duration_sum_s - tick_s_before) / max(rt.ticks.ticks - ticks_before, 1),
            1,
        ),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with mosquitto() as port:
        rows.extend(asyncio.run(_measure(port, racks, args)) for racks in args.racks)
    return rows
