"""The daemon's MQTT client: paho-mqtt on the event loop, through paho's public API only.

Why paho rather than `aiomqtt.Client`: a tick can command a thousand racks at once, and
`aiomqtt.Client.publish` (2.5) gives each QoS 1 message its own coroutine, `wait_for` task and
event, and on every call scans and counts all pending calls (`_pending_call`), which is quadratic
in a burst and logs a warning per call past `pending_calls_threshold`. Measured on the shared
2-core machine (load 5-7) against a local Mosquitto, medians of 7 bursts of QoS 1 commands
handed over in one go: through `aiomqtt.Client.publish` gathered in one task, 1,000 took ~150 ms
until the last was handed to paho, ~280 ms until all were acknowledged and ~90 ms of CPU, 4,000
took ~1,040 ms, ~1,330 ms and ~650 ms (7x for 4x the messages); through this client's
`publish_batch`, ~19 ms, ~110 ms and ~26 ms for 1,000 and ~55 ms, ~230 ms and ~106 ms for 4,000
(linear, and the same as the earlier batch that reached into aiomqtt's paho client). A batch on
top of aiomqtt needs its private paho client, so this client is built directly on paho's
documented external-loop API instead (paho's own asyncio example; `controller.shard.worker`
drives paho the same way with `select`):

- the socket: `controller.mqtt_pump.LoopPump` puts `loop_read`/`loop_write` on the event loop's
  reader and writer and runs `loop_misc` for keepalive; `connect` (DNS, TCP, TLS) runs in a
  worker thread;
- receiving: `on_message` puts paho's `MQTTMessage` in the caller's queue (`queue_type`, e.g. the
  conflating queue) kept as `inbox`, so the caller drains a burst with `get_nowait` after one
  awaited message; one readable event reads every complete packet that arrived (bounded);
- publishing: `publish_batch` queues a whole tick's commands with paho at once and returns one
  future that resolves when the broker has acknowledged all of them (`on_publish`), so the caller
  decides whether to wait; `publish`/`subscribe` await their own acknowledgement;
- latency: paho leaves Nagle's algorithm on, so a command written while an earlier packet waits
  for the broker's delayed ACK sits in the kernel for up to 40 ms: the socket gets `TCP_NODELAY`.

Errors are aiomqtt's public exception types (`aiomqtt.MqttError` and subclasses) and the
settings its public types (`Will`, `TLSParameters`, `ProtocolVersion`), so callers handle this
client and plain `aiomqtt.Client`s alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from controller.mqtt_pump import LoopPump

#: Nagle off: a command leaves at once instead of waiting for the broker's delayed ACK.
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def topic_payload(message: mqtt.MQTTMessage) -> tuple[str, bytes]:
    """A received message as (topic text, raw payload); MQTT payloads arrive as bytes."""
    payload = message.payload
    return message.topic, payload if isinstance(payload, bytes) else b""


class _Batch:
    """Acknowledgements still owed for one `publish_batch` (or `publish`) call."""

    __slots__ = ("future", "pending")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.pending = 0

    def acked(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.future.done():
            self.future.set_result(None)


class Client:
    """An asyncio MQTT client on paho; `inbox` is the queue received messages go to."""

    def __init__(
        self,
        hostname: str,
        port: int = 1883,
        *,
        identifier: str | None = None,
        username: str | None = None,
        password: str | None = None,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
        will: aiomqtt.Will | None = None,
        keepalive: int = 60,
        timeout: float = 10.0,
        queue_type: type[asyncio.Queue[Any]] = asyncio.Queue,
        max_inflight_messages: int | None = None,
        tls_params: aiomqtt.TLSParameters | None = None,
        tls_insecure: bool | None = None,
        socket_options: Iterable[tuple[int, int, int]] = (NODELAY,),
    ) -> None:
        self.hostname, self.port, self.keepalive = hostname, port, keepalive
        #: Default wait for a CONNACK, SUBACK, PUBACK or the disconnection. Units: s.
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        #: The queue `on_message` puts received `paho.mqtt.client.MQTTMessage`s in.
        self.inbox: asyncio.Queue[Any] = queue_type()
        #: Messages dropped because their topic was not UTF-8 or the inbox was full.
        self.dropped = 0
        self._socket_options = tuple(socket_options)
        self._owed: dict[int, _Batch] = {}
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        #: Futures an awaiting call (`publish`, `subscribe`) waits on: failed on disconnection.
        self._waiters: set[asyncio.Future[Any]] = set()
        self._misc: asyncio.Task[None] | None = None
        self._connected: asyncio.Future[None] = self._loop.create_future()
        self._disconnected: asyncio.Future[None] = self._loop.create_future()
        paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=identifier or "",
            protocol=protocol.value,
            reconnect_on_failure=False,
        )
        paho.connect_timeout = timeout
        if max_inflight_messages is not None:
            paho.max_inflight_messages_set(max_inflight_messages)
        if username is not None:
            paho.username_pw_set(username, password)
        if will is not None:
            paho.will_set(will.topic, will.payload, will.qos, will.retain, will.properties)
        paho.on_connect = self._on_connect
        paho.on_disconnect = self._on_disconnect
        paho.on_message = self._on_message
        paho.on_publish = self._on_publish
        paho.on_subscribe = self._on_subscribe
        self._paho = paho
        self._pump = LoopPump(
            paho, self._loop, on_error=self._failed, tls=tls_params, tls_insecure=tls_insecure
        )

    # ------------------------------------------------------------------ connection
    async def __aenter__(self) -> Self:
        """Connect and wait for the broker's CONNACK; `aiomqtt.MqttError` when that fails."""
        if self._connected.done():
            self._connected = self._loop.create_future()
        if self._disconnected.done():
            self._disconnected = self._loop.create_future()
        try:
            # DNS, TCP and TLS block
            await asyncio.to_thread(self._pump.connect, self.hostname, self.port, self.keepalive)
        except (OSError, ValueError, mqtt.WebsocketConnectionError) as exc:
            raise aiomqtt.MqttError(str(exc)) from None
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):
            for level, option, value in self._socket_options:
                sock.setsockopt(level, option, value)
        try:
            await self._wait(self._connected, None)
        except BaseException:
            self._pump.close_socket()
            raise
        self._misc = asyncio.create_task(self._pump.misc_loop(), name="mqtt-keepalive")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect cleanly when still connected; a lost connection is not raised again."""
        try:
            if not self._disconnected.done():
                if self._paho.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    with contextlib.suppress(aiomqtt.MqttError):
                        await self._wait(asyncio.shield(self._disconnected), None)
                if not self._disconnected.done():
                    self._disconnected.set_result(None)
            self._disconnected.exception()  # seen: no "never retrieved" report
        finally:
            if self._misc is not None:
                self._misc.cancel()
            self._pump.close_socket()

    def _failed(self, exc: BaseException) -> None:
        """A read or write raised: the connection is unusable."""
        self._lost(exc)
        self._pump.close_socket()

    def _lost(self, exc: BaseException) -> None:
        """The connection is unusable: fail every awaiting call and `receive`."""
        if not self._disconnected.done():
            self._disconnected.set_exception(exc)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(aiomqtt.MqttError("connection lost"))

    async def _wait(self, future: asyncio.Future[Any], timeout: float | None) -> Any:
        """`future`'s result within `timeout` (default `self.timeout`) or `aiomqtt.MqttError`."""
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                return await future
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    # ------------------------------------------------------------------ paho callbacks
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, flags, properties
        self._pump.in_loop(self._connack, reason)

    def _connack(self, reason: ReasonCode) -> None:
        if self._connected.done():
            return
        if reason.is_failure:
            self._connected.set_exception(aiomqtt.MqttCodeError(reason, "Connection refused"))
        else:
            self._connected.set_result(None)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, flags, properties
        self._pump.in_loop(self._gone, reason)

    def _gone(self, reason: ReasonCode) -> None:
        connected = self._connected
        if not connected.done():  # `__aenter__` awaits it
            connected.set_exception(aiomqtt.MqttCodeError(reason, "Connection refused"))
            return
        if connected.cancelled() or connected.exception() is not None:
            return  # never connected: `__aenter__` raised already, nobody awaits `receive`
        if reason.is_failure:
            self._lost(aiomqtt.MqttCodeError(reason, "Unexpected disconnection"))
        else:
            if not self._disconnected.done():
                self._disconnected.set_result(None)
            self._lost(aiomqtt.MqttError("disconnected"))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        del client, userdata
        self._pump.events += 1
        try:
            _ = message.topic  # hostile bytes: paho raises on a topic that is not UTF-8
            self.inbox.put_nowait(message)
        except (UnicodeDecodeError, asyncio.QueueFull):
            self.dropped += 1

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        del client, userdata, reason, properties
        self._pump.events += 1
        batch = self._owed.pop(mid, None)
        if batch is not None:
            batch.acked()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        del client, userdata, properties
        self._pump.events += 1
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reasons)

    # ------------------------------------------------------------------ API
    @property
    def owed(self) -> int:
        """QoS 1 and 2 acknowledgements still awaited from the broker (bounded by `forget`)."""
        return len(self._owed)

    async def receive(self) -> mqtt.MQTTMessage:
        """The next message; `aiomqtt.MqttError` once the connection is lost."""
        inbox = self.inbox
        if not inbox.empty():
            message: mqtt.MQTTMessage = inbox.get_nowait()
            return message
        disconnected = self._disconnected
        if disconnected.done():
            raise disconnected.exception() or aiomqtt.MqttError("disconnected")
        getting = asyncio.ensure_future(inbox.get())
        try:
            await asyncio.wait((getting, disconnected), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getting.done():
                getting.cancel()
        if getting.done() and not getting.cancelled():
            message = getting.result()
            return message
        raise disconnected.exception() or aiomqtt.MqttError("disconnected")

    async def subscribe(
        self, topic: str | list[tuple[str, int]], qos: int = 0, *, timeout: float | None = None
    ) -> list[ReasonCode]:
        """Subscribe (one filter, or a list of (filter, QoS)) and wait for the SUBACK.

        Returns its reason codes, one per filter: a refusal is one of them, not an exception.
        """
        rc, mid = self._paho.subscribe(topic, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise aiomqtt.MqttCodeError(rc, "Could not subscribe to topic")
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = future
        self._waiters.add(future)
        try:
            reasons: list[ReasonCode] = await self._wait(future, timeout)
            return reasons
        finally:
            self._waiters.discard(future)
            if self._subacks.get(mid) is future:
                del self._subacks[mid]

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 0,
        retain: bool = False,
        *,
        timeout: float | None = None,
    ) -> None:
        """Publish one message and, for QoS 1 and 2, wait until the broker has it."""
        future = self.publish_batch(((topic, payload),), qos, retain=retain)
        if future.done():
            return
        self._waiters.add(future)
        try:
            await self._wait(future, timeout)
        finally:
            self._waiters.discard(future)
            self.forget(future)

    def publish_batch(
        self, messages: Iterable[tuple[str, bytes | str]], qos: int, *, retain: bool = False
    ) -> asyncio.Future[None]:
        """Queue every (topic, payload) now, in order; the future resolves once all are acked.

        Nothing here awaits, so a tick's commands leave in one go; raises `aiomqtt.MqttError`
        when paho refuses a message (no connection).
        """
        future: asyncio.Future[None] = self._loop.create_future()
        batch = _Batch(future)
        owed = self._owed
        paho = self._paho
        for topic, payload in messages:
            info = paho.publish(topic, payload, qos, retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.forget(future)
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
            if qos > 0 and not info.is_published():
                batch.pending += 1
                owed[info.mid] = batch
        if batch.pending == 0:
            future.set_result(None)
        return future

    def forget(self, future: asyncio.Future[None]) -> None:
        """Stop tracking a batch the caller gave up on (timed out), so the table stays bounded."""
        for mid in [m for m, b in self._owed.items() if b.future is future]:
            del self._owed[mid]
