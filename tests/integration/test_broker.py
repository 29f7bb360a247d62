"""Real brokers: the fleet's publisher against Mosquitto's shared subscriptions, persistence across a
restart, and the amqtt fallback."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.adapters.mqtt import drop_session
from ingest.dev.broker import BrokerInfo, LocalBrokerError, start_amqtt
from simulator import make_fleet, next_message, publish_raw, stream
from simulator.publish import unique_client_id

pytestmark = pytest.mark.integration

OWNERS = ["0x" + "a1" * 20, "0x" + "b2" * 20]
UP = "depin/v1/+/up"
_persistent_ids: list[str] = []


@asynccontextmanager
async def subscriber(
    broker: BrokerInfo, filter_: str, *, client_id: str | None = None, persistent: bool = False
) -> AsyncIterator[aiomqtt.Client]:
    """An MQTT 5 QoS1 subscriber with a large Receive Maximum (Mosquitto's default window is 20)."""
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 5000
    if persistent:
        props.SessionExpiryInterval = 600
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=client_id or unique_client_id("sub"),
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False if persistent else True,
        properties=props,
    ) as client:
        await client.subscribe(filter_, qos=1)
        yield client


async def collect(
    client: aiomqtt.Client, expected: int, *, timeout: float = 30.0, grace: float = 0.3
) -> list[Any]:
    """Receive until `expected` messages arrived, then wait `grace` more seconds to catch extras."""
    got: list[Any] = []

    async def take(limit: int | None) -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes | bytearray)
            got.append((str(m.topic), bytes(m.payload)))
            if limit is not None and len(got) >= limit:
                return

    if expected:
        await asyncio.wait_for(take(expected), timeout)
    try:
        await asyncio.wait_for(take(None), grace)
    except TimeoutError:
        pass
    return got


async def test_stream_2000_to_a_shared_subscription(mosquitto: BrokerInfo) -> None:
    fleet = make_fleet(20, OWNERS, seed=11)
    ids = {d.topic for d in fleet}
    async with subscriber(mosquitto, f"$share/{unique_client_id('t')}/{UP}") as sub:
        stats = await stream(fleet, mosquitto.host, mosquitto.port, packets_per_device=100)
        got = await collect(sub, 2000)
    assert stats.sent == 2000
    # Other tests' devices publish on the same broker: count only this fleet's topics.
    mine = [m for m in got if m[0] in ids]
    assert len(mine) == 2000 and len(set(mine)) == 2000
    print(
        f"\npublish throughput (sign + QoS1 PUBACK, one client): {stats.rate:,.0f} msg/s, "
        f"{stats.bytes / stats.seconds / 1e6:.1f} MB/s ({stats.sent} messages in {stats.seconds:.2f} s)"
    )


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
async def test_restart_keeps_a_persistent_sessions_queue(mosquitto: BrokerInfo, hard: bool) -> None:
    """SIGTERM: Mosquitto saves its store and the offline consumer gets every queued message.
    SIGKILL: Mosquitto only snapshots on shutdown (or every autosave_interval), so the queue is gone —
    fault tests that crash the broker must not expect its backlog back."""
    fleet = make_fleet(5, OWNERS, seed=12)
    client_id = unique_client_id("persist")
    _persistent_ids.append(client_id)
    # The consumer's shape: MQTT 5, shared subscription, clean_start=False + session expiry.
    filter_ = f"$share/{unique_client_id('g')}/{UP}"
    try:
        async with subscriber(mosquitto, filter_, client_id=client_id, persistent=True):
            pass  # subscribed; now offline with a live session
        now = 1_700_000_000_000
        sent = [(d.topic, next_message(d, now + i * 1000)) for i in range(100) for d in fleet]
        await publish_raw(mosquitto.host, mosquitto.port, sent)
        await mosquitto.restart(hard=hard)
        async with subscriber(mosquitto, filter_, client_id=client_id, persistent=True) as sub:
            got = await collect(sub, 0 if hard else len(sent), grace=1.0 if hard else 0.3)
        topics = {d.topic for d in fleet}
        assert sorted(m for m in got if m[0] in topics) == ([] if hard else sorted(sent))
    finally:
        # A SIGKILL restart reloads the last snapshot, which can bring back an earlier test's session.
        for cid in _persistent_ids:
            await drop_session(mosquitto.host, mosquitto.port, cid)


async def test_amqtt_fallback_relays_without_share() -> None:
    async with start_amqtt() as broker:
        assert broker.kind == "amqtt" and not broker.shared_subscriptions
        dev = make_fleet(1, OWNERS, seed=13)[0]
        message = next_message(dev, 1_700_000_000_000)
        async with aiomqtt.Client(broker.host, broker.port, identifier=unique_client_id("sub")) as sub:
            await sub.subscribe(UP, qos=1)  # amqtt takes `$share/…` literally: subscribe without it
            # mqtt5=None: the publisher falls back to 3.1.1 when the broker refuses MQTT 5.
            await publish_raw(broker.host, broker.port, [(dev.topic, message)])
            got = await collect(sub, 1, timeout=10)
        assert got == [(dev.topic, message)]


async def test_without_amqtt_the_fallback_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """amqtt is the `embedded` extra's: a production install has none, and saying so beats a traceback."""
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)  # as if not installed
    with pytest.raises(LocalBrokerError, match=r"apt-get install mosquitto, or pip install 'depin-ingest\["):
        async with start_amqtt():
            pass
