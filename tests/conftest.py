"""Fixtures shared by every test package: real services on loopback, started per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import settings

from tests.services import IN_CI, Etcd, Mosquitto, Prometheus, require_binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(require_binary("mosquitto"), tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    store = Etcd(require_binary("etcd"), tmp_path)
    store.start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A Prometheus to `start(targets=..., rule_files=...)` once the module knows what to scrape.

    Module-scoped: a module's tests share one server and its history instead of each waiting
    for fresh scrapes.
    """
    server = Prometheus(require_binary("prometheus"), tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()


# Shared machines are noisy: property tests check correctness, never speed.
# Under CI the examples are derandomized, so a run is repeatable from its commit alone.
settings.register_profile("rheostat", deadline=None, max_examples=100)
settings.register_profile("rheostat-ci", deadline=None, max_examples=100, derandomize=True)
settings.load_profile("rheostat-ci" if IN_CI else "rheostat")


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Commands run in-process configure structlog globally; no test inherits another's set-up."""
    yield
    structlog.reset_defaults()
