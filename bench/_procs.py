"""Real processes for the HA benchmark: a throwaway etcd and `rheostat run` daemons.

Kept apart from `bench.failover` so the scenarios read as scenarios. Everything binds loopback
ports found free at start; logs go to the run's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

from bench._ingest_rig import free_port, wait_port


class EtcdProcess:
    """A single-member etcd; `stop()` cuts every client off, `start()` brings it back."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("etcd") or "/usr/bin/etcd"
        self.workdir = workdir
        self.port, self.peer_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        with (self.workdir / "etcd.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--name=bench",
                    f"--data-dir={self.workdir / 'etcd-data'}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=bench={peer}",
                    "--log-level=error",
                ],
                stdout=log,
                stderr=log,
            )
        wait_port(self.port, timeout_s=20.0)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/health", timeout=2
                ) as response,
            ):
                if b'"true"' in response.read():
                    return
            time.sleep(0.1)
        raise TimeoutError("etcd did not become healthy")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Daemon:
    """`rheostat run --config FILE` as a child process, with its metrics port."""

    def __init__(self, name: str, policy_text: str, workdir: Path, metrics_port: int) -> None:
        self.name = name
        self.metrics_port = metrics_port
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(policy_text)
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        """SIGKILL: no goodbye, no resignation; the lease must run out."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    async def leader(self, session: aiohttp.ClientSession) -> tuple[str, bool] | None:
        """(instance id, `rheostat_ha_leader == 1`) from its metrics; None while unreadable."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=0.5)) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        for line in text.splitlines():
            if line.startswith("rheostat_ha_leader{"):
                instance = line.split('controller="', 1)[1].split('"', 1)[0]
                return instance, float(line.rsplit(" ", 1)[1]) == 1.0
        return None
