"""One ingest worker process: a plain aiomqtt client on the site's shared subscription.

It validates each telemetry message with the daemon's own `Ingest` and writes it into the fleet
arrays in shared memory; its counters go to its row of the shared counter table after every
batch. It keeps no state of its own worth saving, so the pool restarts a dead one as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
import numpy as np

from controller import wire
from controller.ingest import ClassTable, ConflatingQueue, Ingest
from controller.mqtt_client import Client, topic_payload
from controller.policy_file import Policy
from controller.shard.shared_fleet import SharedFleet
from policies.errors import TelemetryError

#: Messages handled per batch before the counters are published and other tasks run.
DRAIN_BATCH = 2048
#: Longest wait between reconnection attempts; well below any command TTL. Units: s.
MAX_BACKOFF_S = 5.0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable for a spawned process."""

    index: int
    workers: int
    segment: str
    policy: Policy
    group: str
    classes: tuple[str, ...]
    locks: Sequence[Any]
    password: str | None


def shared_filter(group: str, site: str) -> str:
    """`$share/<group>/rheostat/v1/<site>/telemetry/+`: each message goes to one member."""
    return f"$share/{group}/{wire.telemetry_filter(site)}"


def main(spec: WorkerSpec) -> None:
    """Process entry point: serve until SIGTERM."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(spec))


async def serve(spec: WorkerSpec, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    topo = spec.policy.topology
    shared = SharedFleet.attach(
        spec.segment, n_gpus=topo.n_gpus, n_racks=topo.n_racks, workers=spec.workers
    )
    try:
        locks = spec.locks
        ingest = Ingest(
            topo,
            shared.fleet,
            ClassTable(spec.classes, frozen=True),
            restart_gap_s=spec.policy.config.control.restart_gap_s,
            msg_ts_s=shared.msg_ts_s,
            guard=lambda rack: locks[rack % len(locks)],
        )
        row = shared.counters[spec.index]
        task = asyncio.create_task(_connected(spec, ingest, row))
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        shared.close()


async def _connected(spec: WorkerSpec, ingest: Ingest, row: np.ndarray[Any, Any]) -> None:
    mq = spec.policy.config.mqtt
    conflated_before = 0
    attempt = 0
    while True:
        queue: ConflatingQueue | None = None
        try:
            async with Client(
                mq.host,
                mq.port,
                identifier=f"{mq.client_id}-ingest-{spec.index}",
                username=mq.username,
                password=spec.password,
                protocol=aiomqtt.ProtocolVersion.V5,
                keepalive=mq.keepalive_s,
                timeout=mq.timeout_s,
                tls_params=_tls(spec),
                tls_insecure=mq.tls.insecure if mq.tls is not None else None,
                queue_type=ConflatingQueue,
            ) as client:
                await client.subscribe(shared_filter(spec.group, spec.policy.site), qos=0)
                attempt = 0
                inbox = client.inbox
                assert isinstance(inbox, ConflatingQueue)
                queue = inbox
                while True:
                    ingest.handle(*topic_payload(await client.receive()))
                    for _ in range(min(queue.qsize(), DRAIN_BATCH)):
                        ingest.handle(*topic_payload(queue.get_nowait()))
                    _publish(row, ingest, conflated_before + queue.conflated)
        except aiomqtt.MqttError:
            pass
        if queue is not None:
            conflated_before += queue.conflated
        attempt += 1
        await asyncio.sleep(random.uniform(0, min(MAX_BACKOFF_S, 0.2 * 2**attempt)))


def _publish(row: np.ndarray[Any, Any], ingest: Ingest, conflated: int) -> None:
    counters = ingest.counters
    row[0], row[1], row[2] = counters.messages, counters.accepted, conflated
    row[3:] = [counters.rejected[r] for r in TelemetryError.REASONS]


def _tls(spec: WorkerSpec) -> aiomqtt.TLSParameters | None:
    tls = spec.policy.config.mqtt.tls
    if tls is None:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(tls.ca_file) if tls.ca_file else None,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
    )
