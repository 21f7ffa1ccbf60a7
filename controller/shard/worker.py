"""One ingest worker process: a plain paho-mqtt client on the site's shared subscription.

It validates each telemetry message with the daemon's own `Ingest` and writes it into the fleet
arrays in shared memory, straight from paho's `on_message`; its counters go to its row of the
shared counter table after every burst. No event loop: the process has one socket and one job,
so it drives paho through paho's documented external-loop calls (`socket()`, `loop_read()`,
`loop_write()`, `loop_misc()`) with `select`, reading every complete packet a wake-up finds.
It keeps no state of its own worth saving, so the pool restarts a dead one as it is.
"""

from __future__ import annotations

import random
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from controller import wire
from controller.ingest import ClassTable, Ingest
from controller.policy_file import Policy
from controller.shard.shared_fleet import SharedFleet
from policies.errors import TelemetryError

#: Packets read per socket wake-up before counters are published and keepalive is served.
READ_BURST = 256
#: Longest wait between reconnection attempts; well below any command TTL. Units: s.
MAX_BACKOFF_S = 5.0
#: How long one `select` waits when nothing arrives (keepalive is served at least this often).
IDLE_S = 0.5


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


class Worker:
    """The connection loop of one worker."""

    def __init__(self, spec: WorkerSpec, ingest: Ingest, row: np.ndarray[Any, Any]) -> None:
        self.spec = spec
        self.ingest = ingest
        self.row = row
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        mq = self.spec.policy.config.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{mq.client_id}-ingest-{self.spec.index}",
            protocol=mqtt.MQTTv5
            if self.spec.policy.config.ingest.protocol == "5"
            else mqtt.MQTTv311,
        )
        if mq.username is not None:
            client.username_pw_set(mq.username, self.spec.password)
        if mq.tls is not None:
            client.tls_set(
                ca_certs=str(mq.tls.ca_file) if mq.tls.ca_file else None,
                certfile=str(mq.tls.cert_file) if mq.tls.cert_file else None,
                keyfile=str(mq.tls.key_file) if mq.tls.key_file else None,
            )
            client.tls_insecure_set(mq.tls.insecure)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        return client

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        del client, userdata
        payload = message.payload
        self.ingest.handle(message.topic, payload if isinstance(payload, bytes) else bytes(payload))

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del userdata, flags, properties
        if not reason.is_failure:
            topic = shared_filter(self.spec.group, self.spec.policy.site)
            client.subscribe(topic, qos=0)
            self.row[-1] = 1

    def serve_forever(self) -> None:
        attempt = 0
        mq = self.spec.policy.config.mqtt
        while True:
            try:
                self.client.connect(mq.host, mq.port, keepalive=mq.keepalive_s)
                sock = self.client.socket()
                if isinstance(sock, socket.socket):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                attempt = 0
                self._pump()
            except (OSError, mqtt.WebsocketConnectionError):
                pass
            self.row[-1] = 0
            attempt += 1
            time.sleep(random.uniform(0, min(MAX_BACKOFF_S, 0.2 * 2**attempt)))

    def _pump(self) -> None:
        """Read, write and keep alive until the connection is lost."""
        client = self.client
        while True:
            sock = client.socket()
            if sock is None:
                return
            writable = [sock] if client.want_write() else []
            readable, can_write, _ = select.select([sock], writable, [], IDLE_S)
            if readable:
                for _ in range(READ_BURST):
                    before = self.ingest.counters.messages
                    if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return
                    if self.ingest.counters.messages == before:
                        break  # nothing complete left (or a control packet): wait for more
                self._publish()
            if can_write and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    def _publish(self) -> None:
        counters, row = self.ingest.counters, self.row
        row[0], row[1] = counters.messages, counters.accepted
        row[3:-1] = [counters.rejected[r] for r in TelemetryError.REASONS]
