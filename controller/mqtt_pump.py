"""Drives one paho client from an asyncio event loop, through paho's documented external loop.

`controller.mqtt_client.Client` owns the MQTT session (connect, publish, subscribe, the inbox);
this module owns the socket: paho's socket callbacks (`on_socket_open/close/register_write/
unregister_write`) put `loop_read`/`loop_write` on the event loop's reader and writer, and
`misc_loop` runs `loop_misc` once a second for keepalive. `connect` (paho's, blocking: DNS, TCP
and the TLS handshake, its settings applied once) runs in a worker thread, so callbacks fired
there are handed to the loop's thread (`in_loop`); `close_socket` drops what a failed connection
leaves.

One readable event reads every complete packet that arrived, up to `READ_BURST`: the client
counts the packets its callbacks handle in `events`, and a read that handled none means nothing
complete is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

#: Packets read per readable event at most, so one busy socket cannot hold the loop long.
READ_BURST = 256
#: How often paho's keepalive and retry bookkeeping runs. Units: s.
MISC_PERIOD_S = 1.0


class LoopPump:
    """The event loop's side of one paho client's socket.

    `on_error` is called (on the loop's thread) with whatever a read or write raised: the
    connection is unusable and the owner fails its waiters and drops the socket.
    """

    def __init__(
        self,
        paho: mqtt.Client,
        loop: asyncio.AbstractEventLoop,
        *,
        on_error: Callable[[BaseException], None],
        tls: aiomqtt.TLSParameters | None = None,
        tls_insecure: bool | None = None,
    ) -> None:
        self._paho = paho
        self._tls = tls
        self._tls_insecure = tls_insecure
        self._tls_done = False
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._on_error = on_error
        #: Packets the owner's callbacks handled (messages, acknowledgements): read progress.
        self.events = 0
        self._fd = -1
        paho.on_socket_open = self._on_socket_open
        paho.on_socket_close = self._on_socket_close
        paho.on_socket_register_write = self._on_socket_register_write
        paho.on_socket_unregister_write = self._on_socket_unregister_write

    def connect(self, hostname: str, port: int, keepalive: int) -> None:
        """Blocking connect, in a worker thread (TLS files are read here, once)."""
        paho = self._paho
        if not self._tls_done and self._tls is not None:
            tls = self._tls
            paho.tls_set(
                ca_certs=tls.ca_certs,
                certfile=tls.certfile,
                keyfile=tls.keyfile,
                cert_reqs=tls.cert_reqs,
                tls_version=tls.tls_version,
                ciphers=tls.ciphers,
                keyfile_password=tls.keyfile_password,
            )
            if self._tls_insecure is not None:
                paho.tls_insecure_set(self._tls_insecure)
        self._tls_done = True
        paho.connect(hostname, port, keepalive)

    def close_socket(self) -> None:
        """Drop a socket paho still holds (a failed handshake, a read that raised)."""
        if self._paho.socket() is not None:
            with contextlib.suppress(Exception):
                self._paho.disconnect()
                self._paho.loop_write()
        self.unwatch()

    def in_loop(self, call: Callable[..., None], *args: Any) -> None:
        """Run `call` on the event loop's thread (paho's connect runs in a worker thread)."""
        if threading.get_ident() == self._loop_thread:
            call(*args)
        else:
            self._loop.call_soon_threadsafe(call, *args)

    def unwatch(self) -> None:
        """Stop watching the socket (it is closed or about to be)."""
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = -1

    async def misc_loop(self) -> None:
        """Keepalive and retries, until paho reports the connection gone."""
        while self._paho.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await asyncio.sleep(MISC_PERIOD_S)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        del client, userdata
        self.in_loop(self._watch, sock.fileno())

    def _watch(self, fd: int) -> None:
        self._fd = fd
        self._loop.add_reader(fd, self._readable)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        del client, userdata, sock
        self.in_loop(self.unwatch)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        del client, userdata
        self.in_loop(self._loop.add_writer, sock.fileno(), self._writable)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        del client, userdata
        self.in_loop(self._unwrite, sock.fileno())

    def _unwrite(self, fd: int) -> None:
        self._loop.remove_writer(fd)

    def _readable(self) -> None:
        """Read every complete packet that arrived, up to `READ_BURST`."""
        paho = self._paho
        try:
            for _ in range(READ_BURST):
                before = self.events
                if paho.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return  # paho reported the loss through on_disconnect
                sock = paho.socket()
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    continue  # decrypted bytes wait inside the TLS object, not the socket
                if self.events == before:
                    return  # nothing complete left, or a control packet: wait for more
        except Exception as exc:
            self._on_error(exc)

    def _writable(self) -> None:
        try:
            self._paho.loop_write()
        except Exception as exc:
            self._on_error(exc)
