"""`rheostat bench ingest`: telemetry ingest rate through a real Mosquitto, against a plain loop.

A child process publishes pre-encoded rack messages (QoS 0, wire protocol v1) as fast as it can;
the consumer is either the daemon's ingest path (conflating queue drained in batches, full
validation, slice writes into `FleetState`, the replay rule) or a plain baseline written the
obvious way (`async for` over aiomqtt's messages, `json.loads`, per-field array assignment, no
validation). Both run in this process against the same broker and the same messages, one after
the other. `rack_msgs_per_s` counts messages the ingest path handled (validated and applied, or
superseded by a newer message for the same rack); `gpu_readings_per_s` is that times the GPUs a
rack; `applied_msgs_per_s` counts only the messages validated and written, so a consumer that
falls behind and conflates shows there. Needs the `mosquitto` binary.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiomqtt

from bench._ingest_rig import SITE, fleet_topology, mosquitto, plain_write, publisher
from controller import wire
from controller.ingest import ClassTable, ConflatingQueue, Ingest
from controller.mqtt_client import Client, topic_payload
from policies.fleet import FleetState
from policies.topology import Topology

NAME = "ingest"
HELP = "telemetry messages/s through a real Mosquitto, against a plain aiomqtt + json loop"
DEFAULT_ARGS = ["--rack-gpus", "32", "72"]
DRAIN_BATCH = 2048


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rack-gpus", type=int, nargs="+", default=[32, 72])
    parser.add_argument("--racks", type=int, default=500, help="racks in the fleet")
    parser.add_argument("--messages", type=int, default=30000, help="messages per run")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[],
        help="also run sharded ingest with this many worker processes (e.g. 1 2)",
    )
    parser.add_argument(
        "--worker-protocols",
        nargs="+",
        choices=["3.1.1", "5"],
        default=["3.1.1"],
        help="MQTT version of the workers' connections; several: each, in the same run",
    )


async def consume_rheostat(port: int, topo: Topology, count: int) -> tuple[float, int, int]:
    """The daemon's path. Returns (seconds, messages handled, messages conflated)."""
    fleet = FleetState.empty(topo)
    ingest = Ingest(topo, fleet, ClassTable(), restart_gap_s=1.0)
    done = f"{wire.TOPIC_ROOT}/{SITE}/done"
    async with Client("127.0.0.1", port, queue_type=ConflatingQueue) as client:
        await client.subscribe(wire.telemetry_filter(SITE))
        await client.subscribe(done, qos=1)
        queue = client.inbox
        assert isinstance(queue, ConflatingQueue)
        with publisher(port, topo.n_racks, int(topo.rack_sizes()[0]), count) as proc:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            start = None
            finished = False
            while not finished:  # the daemon's receive loop (`Controller._receive`)
                message = await client.receive()
                start = start or time.perf_counter()
                for msg in (
                    message,
                    *(queue.get_nowait() for _ in range(min(queue.qsize(), DRAIN_BATCH))),
                ):
                    topic, payload = topic_payload(msg)
                    if topic == done:
                        finished = True
                    else:
                        ingest.handle(topic, payload)
            elapsed = time.perf_counter() - (start or time.perf_counter())
    assert ingest.counters.accepted > 0
    assert sum(ingest.counters.rejected.values()) == 0
    return elapsed, ingest.counters.messages + queue.conflated, queue.conflated


async def consume_baseline(port: int, topo: Topology, count: int) -> tuple[float, int]:
    """A plain aiomqtt + json loop writing the same arrays. Returns (seconds, messages)."""
    fleet = FleetState.empty(topo)
    index = topo.rack_index
    offsets = topo.rack_offsets
    done = f"{wire.TOPIC_ROOT}/{SITE}/done"
    handled = 0
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(wire.telemetry_filter(SITE))
        await client.subscribe(done, qos=1)
        with publisher(port, topo.n_racks, int(topo.rack_sizes()[0]), count) as proc:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            start = None
            async for message in client.messages:
                start = start or time.perf_counter()
                topic = message.topic.value
                if topic == done:
                    break
                plain_write(fleet, index, offsets, message.payload)
                handled += 1
            elapsed = time.perf_counter() - (start or time.perf_counter())
    return elapsed, handled


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with mosquitto() as port:
        if args.workers:
            from bench._shard_ingest import worker_rows

            for rack_gpus in args.rack_gpus:
                rows.extend(worker_rows(port, fleet_topology(args.racks, rack_gpus), args))
            return rows
        for rack_gpus in args.rack_gpus:
            topo = fleet_topology(args.racks, rack_gpus)
            ours_s, handled, conflated = asyncio.run(consume_rheostat(port, topo, args.messages))
            base_s, base_handled = asyncio.run(consume_baseline(port, topo, args.messages))
            ours = handled / ours_s
            base = base_handled / base_s
            rows.append(
                {
                    "rack_gpus": rack_gpus,
                    "messages": args.messages,
                    "rack_msgs_per_s": round(ours),
                    "gpu_readings_per_s": round(ours * rack_gpus),
                    "conflated": conflated,
                    # validated and written (not superseded), the work each message costs
                    "applied_msgs_per_s": round((handled - conflated) / ours_s),
                    "baseline_msgs_per_s": round(base),
                    "baseline_delivered": base_handled,
                    "ratio": round(ours / base, 2),
                }
            )
    return rows
