"""The daemon's MQTT client: aiomqtt, through its public API, with batched QoS 1 publishing.

- receiving: aiomqtt's own reader with the caller's queue class (`queue_type`, e.g. the
  conflating queue); the client keeps a handle on the queue it made (`inbox`), so the caller
  drains a burst with `get_nowait` after one awaited message rather than one await per
  message. Throughput past one process comes from more processes on an MQTT 5 shared
  subscription (`controller.shard`), not from reaching into paho.
- publishing: `aiomqtt.Client.publish` awaits each QoS 1 acknowledgement with its own event, task
  and timeout, and counts every pending call on each publish, which is quadratic in a burst of
  commands (10k racks: seconds of event-loop time). `publish_batch` queues a whole tick's
  commands with paho at once and returns one future that resolves when the broker has
  acknowledged all of them, so the caller decides whether to wait.
- latency: paho leaves Nagle's algorithm on, so a command written while an earlier packet (a
  PUBACK, the previous command) waits for the broker's delayed ACK sits in the kernel for up to
  40 ms. The socket gets `TCP_NODELAY` through aiomqtt's `socket_options`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

#: Nagle off: a command leaves at once instead of waiting for the broker's delayed ACK.
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def topic_payload(message: aiomqtt.Message) -> tuple[str, bytes]:
    """A received message as (topic text, raw payload); MQTT payloads arrive as bytes."""
    payload = message.payload
    return message.topic.value, payload if isinstance(payload, bytes) else b""


class _Batch:
    """Acknowledgements still owed for one `publish_batch` call."""

    __slots__ = ("future", "pending")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.pending = 0

    def acked(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.future.done():
            self.future.set_result(None)


class Client(aiomqtt.Client):
    """`aiomqtt.Client` for the daemon: `inbox` is the queue aiomqtt fills (of `queue_type`)."""

    def __init__(
        self, *args: Any, queue_type: type[asyncio.Queue[Any]] = asyncio.Queue, **kwargs: Any
    ) -> None:
        made: list[asyncio.Queue[Any]] = []

        class Inbox(queue_type):  # type: ignore[valid-type,misc]
            """The caller's queue class, remembered when aiomqtt builds it."""

            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize=maxsize)
                made.append(self)

        kwargs.setdefault("socket_options", (NODELAY,))
        super().__init__(*args, queue_type=Inbox, **kwargs)
        #: The queue aiomqtt puts received `aiomqtt.Message`s in.
        self.inbox: asyncio.Queue[Any] = made[0]
        self._batch_of: dict[int, _Batch] = {}

    async def receive(self) -> aiomqtt.Message:
        """The next message; `aiomqtt.MqttError` once the connection is lost."""
        return await anext(self.messages)

    # ------------------------------------------------------------------ publish
    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        super()._on_publish(client, userdata, mid, reason_code, properties)
        batch = self._batch_of.pop(mid, None)
        if batch is not None:
            batch.acked()

    def publish_batch(
        self, messages: Iterable[tuple[str, bytes]], qos: int
    ) -> asyncio.Future[None]:
        """Queue every (topic, payload) now, in order; the future resolves once all are acked.

        Nothing here awaits, so a tick's commands leave in one go; raises `aiomqtt.MqttError`
        when paho refuses a message (no connection).
        """
        future: asyncio.Future[None] = self._loop.create_future()
        batch = _Batch(future)
        for topic, payload in messages:
            info = self._client.publish(topic, payload, qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                for mid in [m for m, b in self._batch_of.items() if b is batch]:
                    del self._batch_of[mid]
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
            if qos > 0 and not info.is_published():
                batch.pending += 1
                self._batch_of[info.mid] = batch
        if batch.pending == 0:
            future.set_result(None)
        return future

    def forget(self, future: asyncio.Future[None]) -> None:
        """Stop tracking a batch the caller gave up on (timed out), so the table stays bounded."""
        for mid in [m for m, b in self._batch_of.items() if b.future is future]:
            del self._batch_of[mid]
