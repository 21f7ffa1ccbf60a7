"""The ingest benchmarks' rig: a throwaway Mosquitto, a publisher process that floods it with
pre-encoded telemetry, and the plain baseline's per-message work.

`bench.ingest` (one consumer in this process) and `bench._shard_ingest` (consumers in processes
of their own) measure against the same broker, the same messages and the same baseline loop
body, so those live here, below both. The other benchmarks that need a broker or a free port
(`bench.e2e`, `bench.failover`, `bench._procs`) take them from here too. Run as a module, it is
the publisher process (`publisher`).
"""

from __future__ import annotations

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

import numpy as np
from numpy.typing import NDArray

from controller import wire
from policies.fleet import FleetState
from policies.topology import Topology, generate_topology

SITE = "bench"


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
        [
            sys.executable,
            "-m",
            "bench._ingest_rig",
            str(port),
            str(racks),
            str(rack_gpus),
            str(count),
        ],
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


if __name__ == "__main__":
    publish_main(*(int(a) for a in sys.argv[1:5]))
