"""MQTT fixtures: ONE Mosquitto per test session (real broker, persistence on, 127.0.0.1 only).

Tests share the broker, so isolate by name, not by broker: device ids are random per fleet, and every
client id or `$share` group a test creates should come from `unique_client_id()`. A test that leaves
a persistent session behind should remove it (reconnect with clean start and session expiry 0), or
that session keeps queueing every later test's messages.
Never skips: without Mosquitto, a test that needs it fails with the install command.

`secured_mosquitto(dir, files)` runs a broker of its own with deploy/mosquitto.conf — the operators'
file, directive for directive — with only its listener, persistence directory and dynamic security
file paths (and TLS files) rewritten (`ingest.dev.broker.secured_config`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import pytest_asyncio

from ingest.dev.broker import (
    DEPLOY_CONF,
    BrokerInfo,
    SecuredFiles,
    mosquitto_path,
    secured_config,
    start_mosquitto,
)
from simulator.publish import unique_client_id

__all__ = ["DEPLOY_CONF", "mosquitto", "secured_mosquitto", "unique_client_id"]


@asynccontextmanager
async def secured_mosquitto(data_dir: Path, files: SecuredFiles) -> AsyncIterator[BrokerInfo]:
    """Mosquitto with deploy/mosquitto.conf (anonymous refused, dynamic security) on a free port."""
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    writer = partial(_deploy_config, DEPLOY_CONF.read_text(), files=files)
    async with start_mosquitto(data_dir, config=writer) as broker:
        yield broker


def _deploy_config(template: str, data_dir: Path, port: int, *, files: SecuredFiles) -> str:
    return secured_config(template, data_dir, port, files)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrokerInfo]:
    """The session's broker: `.host`, `.port`, `await .restart()` (same port, queued messages kept)."""
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto", pytrace=False)
    started = time.perf_counter()
    async with start_mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        print(f"\nmosquitto up in {time.perf_counter() - started:.2f} s on {broker.host}:{broker.port}")
        yield broker
