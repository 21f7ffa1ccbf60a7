"""Real services on loopback for tests: discovery of their binaries and small process harnesses.

Under CI (CI=true) a missing service binary fails the test: the suite must prove the real thing
works, never pass by skipping it. On a developer machine without the binary the test is skipped
with the command that installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

SERVICE_PATHS = {
    "mosquitto": ("/usr/sbin/mosquitto", "mosquitto"),
    "mosquitto_passwd": ("/usr/bin/mosquitto_passwd", "mosquitto"),
    "prometheus": ("/usr/bin/prometheus", "prometheus"),
    "promtool": ("/usr/bin/promtool", "prometheus"),
    "etcd": ("/usr/bin/etcd", "etcd-server"),
}


def require_binary(name: str, install: str | None = None) -> str:
    """Path of a service binary; fails under CI and skips elsewhere when it is absent.
    `install` says how to get it where no Debian package of `SERVICE_PATHS` does."""
    default, package = SERVICE_PATHS.get(name, (name, name))
    found = shutil.which(name) or (default if os.access(default, os.X_OK) else None)
    if found:
        return found
    how = install or f"apt-get install {package} (make test does)"
    message = f"{name} not found; install it with: {how}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError  # unreachable: pytest.skip raises


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


class Mosquitto:
    """A real Mosquitto broker on a free loopback port, restartable on the same port."""

    def __init__(self, binary: str, workdir: Path, *, extra_config: str = "") -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n" + extra_config
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=log
            )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def restart(self, downtime_s: float = 0.5) -> None:
        self.stop()
        time.sleep(downtime_s)
        self.start()


class Prometheus:
    """A real Prometheus on a free loopback port with its own storage, queried over its HTTP API.

    Scrapes and rule evaluation run every `interval_s` (1 s by default, so a test sees data within
    seconds); the config is written as JSON, which Prometheus reads as YAML.
    """

    def __init__(self, binary: str, workdir: Path, *, interval_s: float = 1.0) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.interval_s = interval_s
        self.config = workdir / "prometheus.json"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, targets: dict[str, list[str]], rule_files: Sequence[Path] = ()) -> None:
        """Scrape `targets` (job name -> host:port list) and evaluate `rule_files`."""
        interval = f"{int(self.interval_s * 1000)}ms"
        self.config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": interval, "evaluation_interval": interval},
                    "rule_files": [str(p.resolve()) for p in rule_files],
                    "scrape_configs": [
                        {"job_name": job, "static_configs": [{"targets": hosts}]}
                        for job, hosts in targets.items()
                    ],
                }
            )
        )
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
            )
        wait_for_port(self.port, timeout_s=30.0)
        deadline = time.monotonic() + 30.0
        while self.api_status("/-/ready") != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("Prometheus did not become ready in 30 s")
            time.sleep(0.1)

    def api_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def api(self, path: str, **params: str) -> Any:
        """The `data` of an API answer; raises with Prometheus' own error text on failure."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector (or scalar) result of `expr` evaluated now."""
        data = self.api("/api/v1/query", query=expr)
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


class Etcd:
    """A real single-member etcd on free loopback ports; its JSON gateway serves `/v3/...`.

    `stop()` ends it (the store is unreachable until `start()` again, data kept on disk), which
    is how tests cut a leader off from its lease store.
    """

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.workdir / "etcd.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--name=test",
                    f"--data-dir={self.workdir / 'etcd-data'}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls=http://127.0.0.1:{self.peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer_port}",
                    f"--initial-cluster=test=http://127.0.0.1:{self.peer_port}",
                    "--log-level=error",
                ],
                stdout=log,
                stderr=log,
            )
        wait_for_port(self.port, timeout_s=20.0)
        deadline = time.monotonic() + 20.0
        while True:
            with contextlib.suppress(OSError):
                request = urllib.request.Request(self.url + "/health")
                with urllib.request.urlopen(request, timeout=2) as response:
                    if json.load(response).get("health") == "true":
                        return
            if time.monotonic() > deadline:
                raise TimeoutError("etcd did not become healthy in 20 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
