"""One ingest worker process: a gmqtt client on the site's shared subscription.

It validates each telemetry message with the daemon's own `Ingest` and writes it into the fleet
arrays in shared memory, straight from the client's message callback; its counters go to its row
of the shared counter table after every burst. The client is gmqtt (an asyncio `Protocol`): it
splits every complete packet out of one socket read of up to 64 KiB, where paho reads one packet
per call with four `recv` calls, which made the client most of a worker's cost per message
besides validation (docs/benchmarks.md has the figures). Each connection runs in an event loop of
its own (`asyncio.run`), so whatever the client leaves behind when the connection ends (its own
reconnection attempt among it) ends with that loop, and the worker reconnects on its own backoff.
It keeps no state of its own worth saving, so the pool restarts a dead one as it is.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gmqtt
import numpy as np
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from controller import wire
from controller.config.service import TlsSection
from controller.ingest import ClassTable, Ingest
from controller.policy_file import Policy
from controller.shard.shared_fleet import SharedFleet
from policies.errors import TelemetryError

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


def worker_username(username: str, index: int) -> str:
    """`<mqtt.username>-ingest-<index>`: each worker its own broker user, with the daemon's
    password. A broker that makes every client id its user name (the shipped Mosquitto config, so
    no credentials can take another's session) would otherwise give the daemon and every worker
    one client id, and each connection would throw the last one off."""
    return f"{username}-ingest-{index}"


def main(spec: WorkerSpec) -> None:
    """Process entry point: serve until the pool terminates the process (SIGTERM)."""
    topo = spec.policy.topology
    shared = SharedFleet.attach(
        spec.segment, n_gpus=topo.n_gpus, n_racks=topo.n_racks, workers=spec.workers
    )
    locks = spec.locks
    config = spec.policy.config
    ingest = Ingest(
        topo,
        shared.fleet,
        ClassTable(spec.classes, frozen=True),
        restart_gap_s=config.control.restart_gap_s,
        # Receive times on the machine-wide monotonic clock the decision process reads
        # freshness by: no step of the wall clock makes racks stale or silent ones fresh.
        clock=time.monotonic,
        wall_clock=time.time,
        max_clock_skew_s=config.telemetry.max_clock_skew_s,
        stale_after_s=config.control.stale_after_s,
        msg_ts_s=shared.msg_ts_s,
        guard=lambda rack: locks[rack % len(locks)],
        cmd_rejected=shared.cmd_rejected,
    )
    Worker(spec, ingest, shared.counters[spec.index]).serve_forever()


def tls_context(tls: TlsSection) -> ssl.SSLContext:
    """The broker's certificate checked as paho's `tls_set` checks it; `insecure` skips only the
    host name check, as paho's `tls_insecure_set` does."""
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    context.check_hostname = not tls.insecure
    return context


class Worker:
    """The connection loop of one worker."""

    def __init__(self, spec: WorkerSpec, ingest: Ingest, row: np.ndarray[Any, Any]) -> None:
        self.spec = spec
        self.ingest = ingest
        self.row = row
        self._publish_due = False
        mq = spec.policy.config.mqtt
        self._tls = tls_context(mq.tls) if mq.tls is not None else None

    def _client(self, lost: asyncio.Event) -> Any:
        mq = self.spec.policy.config.mqtt
        client = gmqtt.Client(f"{mq.client_id}-ingest-{self.spec.index}", clean_session=True)
        if mq.username is not None:
            client.set_auth_credentials(
                worker_username(mq.username, self.spec.index), self.spec.password
            )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = lambda *_: lost.set()
        return client

    def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        del client, qos, properties
        self.ingest.handle(topic, payload)
        if not self._publish_due:
            # The client hands over every packet of one socket read before the event loop runs
            # anything else: the counters are published once per read, after its last packet.
            self._publish_due = True
            asyncio.get_running_loop().call_soon(self._publish)
        return 0

    def _on_connect(self, client: Any, flags: Any, result: int, properties: Any) -> None:
        del flags, result, properties  # called on an accepted connection only
        client.subscribe(shared_filter(self.spec.group, self.spec.policy.site), qos=0)
        self.row[-1] = 1

    async def _session(self) -> None:
        """Connect, subscribe, and serve until the connection is lost; raises if it never
        connects. asyncio sets TCP_NODELAY on the connection's socket; the client sends the
        keepalive pings and drops a connection silent for twice the keepalive."""
        mq = self.spec.policy.config.mqtt
        lost = asyncio.Event()
        client = self._client(lost)
        async with asyncio.timeout(mq.timeout_s):
            await client.connect(
                mq.host,
                mq.port,
                ssl=self._tls if self._tls is not None else False,
                keepalive=mq.keepalive_s,
                version=MQTTv50 if self.spec.policy.config.ingest.protocol == "5" else MQTTv311,
            )
        await lost.wait()

    def serve_forever(self) -> None:
        attempt = 0
        while True:
            try:
                asyncio.run(self._session())
                attempt = 0  # it was connected: the next attempt starts the backoff afresh
            except (OSError, TimeoutError, gmqtt.MQTTConnectError):
                pass
            self.row[-1] = 0
            attempt += 1
            time.sleep(random.uniform(0, min(MAX_BACKOFF_S, 0.2 * 2**attempt)))

    def _publish(self) -> None:
        self._publish_due = False
        counters, row = self.ingest.counters, self.row
        row[0], row[1] = counters.messages, counters.accepted
        row[3:-1] = [counters.rejected[r] for r in TelemetryError.REASONS]
