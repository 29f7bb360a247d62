"""MQTT fixtures: one real Mosquitto per test session on 127.0.0.1 (never skipped: missing = failure)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest.adapters.broker import BrokerInfo, mosquitto_path, start_mosquitto

__all__ = ["mosquitto"]


@pytest.fixture(scope="session")
async def mosquitto() -> AsyncIterator[BrokerInfo]:
    if mosquitto_path() is None:
        pytest.fail(
            "mosquitto is not installed: apt-get install mosquitto (make test does this)", pytrace=False
        )
    with tempfile.TemporaryDirectory(prefix="depin-mqtt-") as tmp:
        async with start_mosquitto(Path(tmp)) as broker:
            yield broker
