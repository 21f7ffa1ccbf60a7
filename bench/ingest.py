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
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from numpy.typing import NDArray

from controller import wire
from controller.ingest import ClassTable, ConflatingQueue, Ingest
from controller.mqtt_client import Client, topic_payload
from policies.fleet import FleetState
from policies.topology import Topology, generate_topology

NAME = "ingest"
HELP = "telemetry messages/s through a real Mosquitto, against a plain aiomqtt + json loop"
DEFAULT_ARGS = ["--rack-gpus", "32", "72"]
SITE = "bench"
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


@contextlib.contextmanager
def mosquitto() -> Iterator[int]:
    """A throwaway Mosquitto on a free loopback port; yields the port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
        )
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(port)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def fleet_topology(racks: int, rack_gpus: int) -> Topology:
    return generate_topology(racks * rack_gpus, site=SITE, servers_per_rack=rack_gpus // 8)


def encoded_messages(racks: int, rack_gpus: int, count: int) -> list[tuple[str, bytes]]:
    """`count` telemetry messages cycling over the racks with rising seq. Deterministic but for
    the timestamps: the wall clock now, as agents' clocks would say, since ingest refuses
    messages further than `telemetry.max_clock_skew_s` from the site's time."""
    rng = np.random.default_rng(1)
    start_s = time.time()
    out = []
    ids = [f"r{i:05d}" for i in range(racks)]
    for k in range(count):
        rack = k % racks
        n = rack_gpus
        msg = wire.Telemetry(
            rack=ids[rack],
            seq=k // racks + 1,
            ts_s=start_s + k * 1e-6,
            power_w=rng.uniform(100, 700, n).round(1),
            sm_clock_mhz=rng.uniform(800, 1980, n).round(0),
            util=rng.uniform(0, 1, n).round(3),
            mem_util=rng.uniform(0, 1, n).round(3),
            temp_c=rng.uniform(30, 80, n).round(1),
            cap_w=np.full(n, 700.0),
            classes=("training", "inference"),
            class_idx=(np.arange(n) % 2).astype(np.int64),
            rack_power_w=float(n * 500.0),
        )
        out.append((wire.telemetry_topic(SITE, ids[rack]), wire.encode_telemetry(msg)))
    return out


def publish_main(port: int, racks: int, rack_gpus: int, count: int) -> None:
    """Child process: publish every message as fast as the broker takes them."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    messages = encoded_messages(racks, rack_gpus, count)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    print("ready", flush=True)
    sys.stdin.readline()
    for topic, payload in messages:
        client.publish(topic, payload, qos=0)
    client.publish(f"{wire.TOPIC_ROOT}/{SITE}/done", b"", qos=1).wait_for_publish(60)
    client.loop_stop()
    client.disconnect()


@contextlib.contextmanager
def publisher(port: int, racks: int, rack_gpus: int, count: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ingest", str(port), str(racks), str(rack_gpus), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    with proc:  # closes its pipes on the way out
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("publisher did not start")
            yield proc
        finally:
            proc.wait(120)


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


def plain_write(
    fleet: FleetState, index: dict[str, int], offsets: NDArray[np.int64], payload: Any
) -> None:
    """The baseline consumer's work for one message: `json.loads` and the slice writes, with no
    validation. Both ingest benchmarks time this same loop body."""
    obj = json.loads(payload)
    r = index[obj["rack"]]
    rows = slice(int(offsets[r]), int(offsets[r + 1]))
    fleet.power_w[rows] = obj["power_w"]
    fleet.sm_clock_mhz[rows] = obj["sm_clock_mhz"]
    fleet.util[rows] = obj["util"]
    fleet.mem_util[rows] = obj["mem_util"]
    fleet.temp_c[rows] = obj["temp_c"]
    fleet.cap_w[rows] = obj["cap_w"]
    fleet.rack_power_w[r] = obj["rack_power_w"]
    fleet.rack_seq[r] = obj["seq"]


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


if __name__ == "__main__":
    publish_main(*(int(a) for a in sys.argv[1:5]))
