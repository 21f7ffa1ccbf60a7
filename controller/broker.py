"""The daemon's broker side: connect, subscribe the subscription table, receive, say `online`.

`BrokerSession` is a mixin of `controller.daemon.Controller`: the MQTT loop (jittered
reconnects, at most `wire.RECONNECT_MAX_S`, well inside any command TTL), one session per
connection (subscribe every row of `Controller.subscriptions`, publish the retained `online`
status, resend current commands, then receive in batches), and the leader's announcement when
it takes the lead. A message whose handling raises is logged, counted and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiomqtt
import structlog

from controller import wire
from controller.ingest import ConflatingQueue
from controller.mqtt_client import Client, topic_payload
from controller.settings import mqtt_password
from controller.subscriptions import SubscriptionTable
from controller.wire import MessageRejections

if TYPE_CHECKING:
    from controller.ha.runner import HaRunner
    from controller.publisher import CommandPublisher
    from controller.runtime import Runtime

log = structlog.get_logger("rheostat.controller")

#: Messages handled per batch before yielding to the loop, so ticks and scrapes stay on time.
DRAIN_BATCH = 2048


class BrokerSession:
    """The MQTT half of the daemon (a mixin: the attributes below are the controller's)."""

    runtime: Runtime
    ha: HaRunner
    publisher: CommandPublisher
    rejections: MessageRejections
    subscriptions: SubscriptionTable
    instance: str
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    _client: Client | None
    _send_lock: asyncio.Lock
    _stopping: bool

    @property
    def epoch(self) -> int:
        """The leader's term that commands and the status carry; 0 without `ha`."""
        return self.ha.epoch()

    if TYPE_CHECKING:  # provided by `Controller`; declared for the type checker only

        def _maybe_ready(self) -> None: ...

        async def _send_due(
            self, *, tick_started_s: float | None = None, decided_s: float | None = None
        ) -> tuple[int, int]: ...

    def _make_client(self) -> Client:
        rt = self.runtime
        mq = rt.policy.config.mqtt
        site = rt.policy.site
        offline = wire.encode_status(
            wire.Status(
                state="offline", ts_s=self.clock(), controller=self.instance, epoch=self.epoch
            )
        )
        tls = None
        if mq.tls is not None:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(mq.tls.ca_file) if mq.tls.ca_file else None,
                certfile=str(mq.tls.cert_file) if mq.tls.cert_file else None,
                keyfile=str(mq.tls.key_file) if mq.tls.key_file else None,
            )
        protocol = (
            aiomqtt.ProtocolVersion.V5 if mq.protocol == "5" else aiomqtt.ProtocolVersion.V311
        )
        return Client(
            mq.host,
            mq.port,
            identifier=mq.client_id,
            username=mq.username,
            password=mqtt_password(mq),
            protocol=protocol,
            # With `ha`, several processes share the site's status: no will (see README).
            will=None
            if self.ha.enabled
            else aiomqtt.Will(wire.status_topic(site), offline, qos=1, retain=True),
            keepalive=mq.keepalive_s,
            timeout=mq.timeout_s,
            queue_type=ConflatingQueue,
            # The daemon bounds what is in flight itself (controller.publisher); paho's own bound
            # scans every unacknowledged message on each acknowledgement.
            max_inflight_messages=0,
            tls_params=tls,
            tls_insecure=mq.tls.insecure if mq.tls is not None else None,
        )

    async def _publish_status(self, client: Client, state: str) -> None:
        if not self.ha.is_leader():
            return  # only the leader writes the site's retained status
        payload = wire.encode_status(
            wire.Status(
                state="online" if state == "online" else "offline",
                ts_s=self.clock(),
                controller=self.instance,
                epoch=self.epoch,
            )
        )
        await client.publish(
            wire.status_topic(self.runtime.policy.site), payload, qos=1, retain=True
        )

    async def _mqtt_loop(self) -> None:
        rt = self.runtime
        attempt = 0
        connected_before = False
        while True:
            try:
                async with self._make_client() as client:
                    try:
                        await self._session(client, first=not connected_before)
                    except aiomqtt.MqttError:
                        raise
                    except BaseException:
                        # Stopped, or a fault is ending the daemon: a clean disconnect fires no
                        # last will, so say `offline` before leaving.
                        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                            async with asyncio.timeout(rt.policy.config.mqtt.timeout_s):
                                await self._publish_status(client, "offline")
                        raise
                    finally:
                        connected_before = connected_before or rt.mqtt_connected
                        if rt.mqtt_connected:
                            attempt = 0
            except aiomqtt.MqttError as exc:
                mq = rt.policy.config.mqtt
                log.warning(
                    "broker connection lost"
                    if connected_before
                    else "cannot connect to the broker",
                    broker=f"{mq.host}:{mq.port}",
                    error=str(exc),
                    attempt=attempt + 1,
                )
            finally:
                self._client = None
                rt.mqtt_connected = rt.subscribed = False
                # The broker may have lost those commands: the reconnect resends every rack's.
                self.publisher.disconnected()
            attempt += 1
            await asyncio.sleep(wire.reconnect_delay_s(attempt))

    async def _session(self, client: Client, *, first: bool) -> None:
        """One broker connection: subscribe, say `online`, resend every command, then receive."""
        rt = self.runtime
        mq = rt.policy.config.mqtt
        for topic, qos in self.subscriptions.filters():
            await client.subscribe(topic, qos=qos)
        await self._publish_status(client, "online")
        queue = client.inbox
        rt.queue = queue if isinstance(queue, ConflatingQueue) else None
        self._client = client
        self.publisher.connected(client)
        rt.mqtt_connected = rt.subscribed = True
        if not first:
            rt.mqtt_reconnects += 1
        log.info("connected", broker=f"{mq.host}:{mq.port}", protocol=mq.protocol)
        self._maybe_ready()
        async with self._send_lock:
            rt.book.invalidate(self.monotonic())
        await self._send_due()  # republish current commands at once
        await self._receive(client)

    def _guarded(self, handle: Callable[[str, bytes], bool]) -> Callable[[str, bytes], bool]:
        """`handle` that never raises: one message's fault is logged, counted and dropped."""
        rejections = self.rejections
        site_prefix = f"{wire.TOPIC_ROOT}/{self.runtime.policy.site}/"

        def guarded(topic: str, payload: bytes) -> bool:
            try:
                return handle(topic, payload)
            except Exception:  # the loop must go on whatever one message does
                kind = MessageRejections.kind_of(topic, site_prefix)
                rejections.counts[kind, "internal_error"] = (
                    rejections.counts.get((kind, "internal_error"), 0) + 1
                )
                log.exception("message could not be handled; dropped", topic=topic[:200])
                return False

        return guarded

    async def _receive(self, client: Client) -> None:
        handle = self._guarded(self.subscriptions.dispatch())
        queue = client.inbox
        while True:
            handle(*topic_payload(await client.receive()))
            # Drain what arrived in the same read without one await per message.
            for _ in range(min(queue.qsize(), DRAIN_BATCH)):
                handle(*topic_payload(queue.get_nowait()))

    # ------------------------------------------------------------------ leadership
    def _took_lead(self) -> None:
        """A new term: every rack is due under the new epoch; status and commands go at once.

        The standby decided on every tick, so the last decision is current: sending it now
        rather than at the next tick shortens the failover by up to a tick.
        """
        self.runtime.book.adopt(self.runtime.fleet.cap_w)
        client = self._client
        if client is None or self._stopping:
            return
        task = asyncio.create_task(self._announce(client), name="took-lead")
        self.publisher.confirming.add(task)
        task.add_done_callback(self.publisher.confirming.discard)

    async def _announce(self, client: Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(self.runtime.policy.config.mqtt.timeout_s):
                await self._publish_status(client, "online")
        await self._send_due()
