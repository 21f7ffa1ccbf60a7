"""Fixtures shared by every test package: real services on loopback, started per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.services import Mosquitto, require_binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(require_binary("mosquitto"), tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# Shared machines are noisy: property tests check correctness, never speed.
settings.register_profile("rheostat", deadline=None, max_examples=100)
settings.load_profile("rheostat")
