"""MQTT fixtures: ONE Mosquitto per test session (real broker, persistence on, 127.0.0.1 only).

Tests share the broker, so isolate by name, not by broker: device ids are random per fleet, and every
client id or `$share` group a test creates should come from `unique_client_id()`. A test that leaves
a persistent session behind should remove it (reconnect with clean start and session expiry 0), or
that session keeps queueing every later test's messages.
Never skips: without Mosquitto, a test that needs it fails with the install command.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ingest.adapters.broker import BrokerInfo, mosquitto_path, start_mosquitto
from simulator.fleet import unique_client_id

__all__ = ["mosquitto", "unique_client_id"]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrokerInfo]:
    """The session's broker: `.host`, `.port`, `await .restart()` (same port, queued messages kept)."""
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    started = time.perf_counter()
    async with start_mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        print(f"\nmosquitto up in {time.perf_counter() - started:.2f} s on {broker.host}:{broker.port}")
        yield broker
