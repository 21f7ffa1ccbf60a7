"""`rheostat bench ingest --workers ...`: sharded ingest against a plain loop, each in processes.

Every consumer runs in processes of its own and is paused (SIGSTOP) while the publisher fills the
broker's queues for it, then resumed: the rate measured is the consumer's alone, not the
publisher's, which shares the same cores. Beside the rate, `cpu_us_per_msg` is the consumers'
CPU time (user and system, all their processes) per message handled, from resumption to the
last message: on a machine shared with other work it moves far less than the rate does. Used by
`bench.ingest`; not a benchmark by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiomqtt

from bench._ingest_rig import SITE, fleet_topology, plain_write, publisher
from controller import wire
from policies.fleet import FleetState
from policies.topology import Topology


def _baseline_child(port: int, racks: int, rack_gpus: int, count: int, conn: Any) -> None:
    """Child process: the plain loop; tells the parent when it is subscribed, then when done."""

    async def consume() -> tuple[float, float]:
        topo = fleet_topology(racks, rack_gpus)
        fleet = FleetState.empty(topo)
        index, offsets = topo.rack_index, topo.rack_offsets
        handled = 0
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-plain") as client:
            await client.subscribe(wire.telemetry_filter(SITE))
            conn.send("subscribed")
            cpu_s = time.process_time()  # paused (SIGSTOP) from here until the queue is full
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                plain_write(fleet, index, offsets, message.payload)
                handled += 1
                if handled == count:
                    break
            return time.monotonic(), time.process_time() - cpu_s

    conn.send(asyncio.run(consume()))


def _publish_all(port: int, topo: Topology, count: int) -> None:
    """Publish every message and wait until the broker has taken them all."""
    with publisher(port, topo.n_racks, int(topo.rack_sizes()[0]), count) as proc:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def _paused(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        os.kill(pid, sig)


def _cpu_s(pids: list[int]) -> float:
    """User and system CPU time of processes so far (Linux `/proc`). Units: s."""
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total * tick_s


async def consume_plain_process(port: int, topo: Topology, count: int) -> tuple[float, float]:
    """(seconds, CPU seconds) the plain loop takes to drain `count` queued messages."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    proc = context.Process(
        target=_baseline_child,
        args=(port, topo.n_racks, int(topo.rack_sizes()[0]), count, child),
    )
    proc.start()
    try:
        assert await asyncio.to_thread(parent.poll, 60), "plain consumer did not subscribe"
        parent.recv()
        assert proc.pid is not None
        _paused([proc.pid], signal.SIGSTOP)
        _publish_all(port, topo, count)
        resumed = time.monotonic()
        _paused([proc.pid], signal.SIGCONT)
        assert await asyncio.to_thread(parent.poll, 300), "plain consumer did not finish"
        finished, cpu_s = parent.recv()
        return finished - resumed, cpu_s
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        proc.close()
        parent.close()
        child.close()


async def consume_workers(
    port: int, topo: Topology, count: int, workers: int, protocol: str = "3.1.1"
) -> tuple[float, float, int, int]:
    """Sharded ingest (`controller.shard`): `workers` processes on a shared subscription, each
    connected with MQTT `protocol` ("5" or "3.1.1").

    Returns (seconds to drain `count` queued messages, the workers' CPU seconds meanwhile,
    messages validated and written, messages conflated).
    """
    from controller.config import PolicyFile
    from controller.policy_file import Policy
    from controller.shard.pool import IngestPool

    config = PolicyFile.model_validate(
        {
            "site": {"name": SITE, "topology": {"generate": {"gpus": topo.n_gpus}}},
            "mqtt": {"port": port, "client_id": f"bench-shard-{workers}"},
            "ingest": {
                "workers": workers,
                "share_group": f"bench{workers}",
                "protocol": protocol,
            },
        }
    )
    pool = IngestPool(
        Policy(config=config, topology=topo, source="<bench>"),
        initial=FleetState.empty(topo),
        classes=(),
        password=None,
    )
    try:
        pool.start()
        async with asyncio.timeout(60):
            while pool.subscribed() < workers:
                await asyncio.sleep(0.05)
        pids = pool.pids()
        _paused(pids, signal.SIGSTOP)
        _publish_all(port, topo, count)
        cpu_before_s = _cpu_s(pids)
        resumed = time.monotonic()
        _paused(pids, signal.SIGCONT)
        async with asyncio.timeout(300):
            while True:
                counters, conflated = pool.counters()
                if counters.messages + conflated >= count:
                    break
                await asyncio.sleep(0.005)
        elapsed = time.monotonic() - resumed
        cpu_s = _cpu_s(pids) - cpu_before_s
        assert sum(counters.rejected.values()) == 0
        return elapsed, cpu_s, counters.accepted, conflated
    finally:
        pool.close()


def worker_rows(port: int, topo: Topology, args: argparse.Namespace) -> list[dict[str, Any]]:
    rack_gpus = int(topo.rack_sizes()[0])
    rows = []
    base_s, base_cpu_s = asyncio.run(consume_plain_process(port, topo, args.messages))
    base_rate = args.messages / base_s
    rows.append(
        {
            "rack_gpus": rack_gpus,
            "consumer": "plain aiomqtt loop",
            "gpu_readings_per_s": round(base_rate * rack_gpus),
            "msgs_per_s": round(base_rate),
            "written": args.messages,
            "conflated": 0,
            "cpu_us_per_msg": round(1e6 * base_cpu_s / args.messages, 1),
            "load_1m": round(os.getloadavg()[0], 2),
        }
    )
    for protocol in args.worker_protocols:
        by_workers: dict[int, float] = {}
        for workers in args.workers:
            elapsed, cpu_s, written, conflated = asyncio.run(
                consume_workers(port, topo, args.messages, workers, protocol)
            )
            rate = written / elapsed  # validated and written only: conflated ones do not count
            by_workers[workers] = rate
            rows.append(
                {
                    "rack_gpus": rack_gpus,
                    "consumer": f"{workers} worker(s)",
                    "protocol": protocol,
                    "gpu_readings_per_s": round(rate * rack_gpus),
                    "msgs_per_s": round(rate),
                    "written": written,
                    "conflated": conflated,
                    "cpu_us_per_msg": round(1e6 * cpu_s / max(1, written + conflated), 1),
                    "vs_plain": round(rate / base_rate, 2),
                    "vs_1_worker": round(rate / by_workers[1], 2) if 1 in by_workers else None,
                    "load_1m": round(os.getloadavg()[0], 2),
                }
            )
    return rows
