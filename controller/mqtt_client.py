"""The daemon's MQTT client: aiomqtt with a cheaper receive path and batched QoS 1 publishing.

aiomqtt's per-message costs are what limit the daemon at fleet scale, not MQTT itself:
- receiving: paho reads a packet with three to four `recv` calls and aiomqtt's reader handles one
  packet per event-loop wake-up, then wraps it in a validated `Message`. Here one `recv` fills a
  buffer that many packets are parsed from, a wake-up reads up to `READ_BATCH` packets, and a
  message enters the (conflating) queue as a bare topic string and payload. A QoS 0 PUBLISH
  (telemetry) wholly in the buffer is cut out of it here, without paho's packet objects; every
  other packet, and anything unusual about one, goes through paho as before.
- publishing: `aiomqtt.Client.publish` awaits each QoS 1 acknowledgement with its own event, task
  and timeout, and counts every pending call on each publish, which is quadratic in a burst of
  commands (10k racks: seconds of event-loop time). `publish_batch` queues a whole tick's
  commands with paho at once and returns one future that resolves when the broker has
  acknowledged all of them, so the caller decides whether to wait.
- latency: paho leaves Nagle's algorithm on, so a command written while an earlier packet (a
  PUBACK, the previous command) waits for the broker's delayed ACK sits in the kernel for up to
  40 ms. The socket gets `TCP_NODELAY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as mqtt

#: Packets parsed per socket wake-up before other tasks get a turn (ticks, scrapes).
READ_BATCH = 64
#: Bytes asked of the socket per `recv`; a 72-GPU telemetry message is about 6 kB.
RECV_BYTES = 256 * 1024


class Received:
    """One received message: the topic as text and the raw payload."""

    __slots__ = ("payload", "topic")

    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic = topic
        self.payload = payload


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
    """`aiomqtt.Client` for the daemon; the queue holds `Received` items, read with `receive()`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: aiomqtt's queue (`queue_type`), holding `Received` items rather than `Message`s.
        self.inbox = cast(asyncio.Queue[Any], self._queue)
        self._batch_of: dict[int, _Batch] = {}
        self._arrived: asyncio.Future[None] | None = None
        self._rx = b""
        self._rx_pos = 0
        self._client._sock_recv = self._buffered_recv  # type: ignore[method-assign]

    # ------------------------------------------------------------------ receive
    def _buffered_recv(self, bufsize: int) -> bytes:
        """paho's `_sock_recv`, served from one large read instead of a syscall per field."""
        pos, buf = self._rx_pos, self._rx
        if pos >= len(buf):
            sock = self._client._sock
            if sock is None:
                raise ConnectionError("socket closed")
            try:
                data = sock.recv(RECV_BYTES)
            except ssl.SSLWantReadError as exc:
                raise BlockingIOError from exc
            except ssl.SSLWantWriteError as exc:
                self._client._call_socket_register_write()
                raise BlockingIOError from exc
            if len(data) <= bufsize:
                return data  # includes b"" at end of stream, which paho treats as a lost link
            buf, pos = data, 0
        end = pos + bufsize
        self._rx, self._rx_pos = buf, end
        return buf[pos:end]

    def _fill(self) -> bool:
        """Read into the empty buffer; False when the socket has nothing now.

        The end of the stream or a socket error leaves the buffer empty and returns True, so
        paho's own read meets it and handles the lost connection as it always does.
        """
        try:
            data = self._buffered_recv(RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            return True
        self._rx, self._rx_pos = data, 0
        return True

    def _buffered(self) -> bool:
        return self._rx_pos < len(self._rx)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        del client, userdata
        self._deliver(message.topic, bytes(message.payload))

    def _deliver(self, topic: str, payload: bytes) -> None:
        try:
            self.inbox.put_nowait(Received(topic, payload))
        except asyncio.QueueFull:
            self._logger.warning("Message queue is full. Discarding message.")
            return
        if self._arrived is not None:
            self._wake()

    def _take_publish(self, v5: bool) -> bool:
        """Cut a QoS 0 PUBLISH out of the buffer and deliver it; False leaves it to paho.

        Only a packet that is complete in the buffer, with a non-empty UTF-8 topic and lengths
        that add up, is taken; nothing is consumed otherwise.
        """
        buf, pos = self._rx, self._rx_pos
        end = len(buf)
        if pos >= end or buf[pos] & 0xF6 != 0x30:  # PUBLISH, QoS 0 (DUP and RETAIN allowed)
            return False
        length, shift, i = 0, 0, pos + 1
        while True:  # remaining length: at most four 7-bit groups
            if i >= end or i > pos + 4:
                return False
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        stop = i + length
        if stop > end or length < 2:
            return False
        topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
        if topic_end == i + 2 or topic_end > stop:
            return False
        start = topic_end
        if v5:  # skip the properties (none of them matter to the daemon)
            props, shift = 0, 0
            while True:
                if start >= stop or shift > 21:
                    return False
                byte = buf[start]
                start += 1
                props |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            start += props
            if start > stop:
                return False
        try:
            topic = buf[i + 2 : topic_end].decode()
        except UnicodeDecodeError:
            return False
        self._rx_pos = stop
        self._client._last_bytes_received = time.monotonic()  # paho's keepalive reads it
        self._deliver(topic, buf[start:stop])
        return True

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        del userdata
        self._rx, self._rx_pos = b"", 0
        with contextlib.suppress(OSError, AttributeError):  # not TCP (a unix socket, a proxy)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        v5 = client._protocol == mqtt.MQTTv5

        def readable() -> None:
            try:
                for _ in range(READ_BATCH):
                    if client._sock is None:
                        return
                    if client._in_packet["command"] == 0:
                        if not self._buffered() and not self._fill():
                            break  # nothing to read
                        if self._take_publish(v5):
                            continue
                    rc = client._packet_read()
                    if rc == mqtt.MQTT_ERR_AGAIN:
                        break
                    if rc > 0:
                        client._loop_rc_handle(rc)
                        return
                # Bytes already in the buffer raise no socket event: come back for them.
                if self._buffered():
                    self._loop.call_soon(readable)
            except Exception as exc:  # a broken link: aiomqtt's reader does the same
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def start_misc() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        # paho calls this from the executor thread that runs connect().
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), readable)
        self._loop.call_soon_threadsafe(start_misc)

    async def receive(self) -> Received:
        """The next message; `aiomqtt.MqttError` once the connection is lost.

        An empty queue is waited on with one future that `_on_message` completes, so the
        consumer runs on the next loop iteration rather than after a task and `asyncio.wait`
        hop (three iterations, in which the reader keeps filling the queue).
        """
        queue = self.inbox
        while not queue.qsize():
            lost = self._disconnected
            if lost.done():
                # Retrieved here, so asyncio does not log it as an exception nobody saw.
                cause = None if lost.cancelled() else lost.exception()
                raise aiomqtt.MqttError("Disconnected during message iteration") from cause
            arrived = self._arrived = self._loop.create_future()
            lost.add_done_callback(self._wake)
            try:
                await arrived
            finally:
                lost.remove_done_callback(self._wake)
                self._arrived = None
        item: Received = queue.get_nowait()
        return item

    def _wake(self, _: object = None) -> None:
        arrived = self._arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

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
