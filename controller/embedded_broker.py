"""An embedded MQTT 3.1.1 broker (amqtt) for `rheostat demo`, run as a child process.

A child process keeps the broker off the controller's event loop and on the machine's other core,
and lets it be stopped cleanly with a signal. `python -m controller.embedded_broker PORT` serves
anonymous clients on 127.0.0.1:PORT until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from controller import extras
from policies.errors import ConfigError

START_TIMEOUT_S = 20.0


async def _serve(port: int) -> None:
    from amqtt.broker import Broker  # noqa: PLC0415 - only the child process needs it

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    await stop.wait()
    await broker.shutdown()


@contextmanager
def embedded_broker() -> Iterator[int]:
    """Start the broker on a free loopback port; yields the port once it accepts connections."""
    extras.check("amqtt", "the demo's embedded MQTT broker (or pass --broker)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.embedded_broker", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError("the embedded MQTT broker (amqtt) did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
