"""Fixtures shared by every test package: real services on loopback, started per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Mosquitto, require_binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(require_binary("mosquitto"), tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
