"""MQTT source for the consumer: shared subscription, batches, acknowledgement only after commit.

aiomqtt 2.x has no public manual-ack switch (upstream issue #345); its paho client has
`manual_ack_set(True)` and `ack(mid, qos)`, which this adapter wraps. Details that decide whether
ack-after-commit works (ARCHITECTURE §1, FIELD-NOTES "MQTT"):
- MQTT 5 with a Receive Maximum ≥ the batch size, or the broker stops sending at 20 unacked messages;
- a persistent session (clean_start=False + session expiry) so unacked messages come back after a
  reconnect; a batch that failed to commit means reconnect, never skip;
- acks in arrival order; never set `max_queued_incoming_messages` (a full queue drops silently).

Backpressure. The consumer holds at most two batches (one committing, the next being judged) and reads
no further until the older one is committed and acked, so a slow database stops the reading. aiomqtt's
queue is unbounded, but it cannot grow without bound: with manual ack the broker sends a client at most
Receive Maximum unacknowledged QoS 1/2 messages (MQTT 5 §3.3.4; Mosquitto honours it, measured in
tests/integration/test_faults.py: with receive_maximum=50 and the `packets` table locked, 400 published
messages leave exactly 50 in this process and the rest queued in the broker's session). So messages held
in this process (batch + queue) ≤ `receive_maximum`, shown as `depin_mqtt_pending_messages`; the backlog
waits in the broker (`max_queued_messages`). Over MQTT 3.1.1 the broker's `max_inflight_messages` plays
that role. With `manual_ack=False` paho acks on receipt, nothing bounds the queue, and a crash loses
whatever it held — hence manual ack only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.adapters import paho_properties

paho_properties.install()  # every PUBLISH received builds a Properties: share its tables
log = logging.getLogger(__name__)

UP_FILTER = "depin/v1/+/up"


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "depin-ingest-1"
    group: str = "ingest"
    shared: bool = True  # False for brokers without $share (amqtt, the demo's fallback)
    mqtt5: bool = True
    receive_maximum: int = 5000
    session_expiry_s: int = 3600
    username: str | None = None
    password: str | None = None
    manual_ack: bool = True  # False only to demonstrate, in a test, what auto-ack loses
    ack_feedback: bool = False  # publish per-packet outcomes on depin/v1/{id}/ack after each commit


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_ms: int


def subscription(config: MqttConfig) -> str:
    return f"$share/{config.group}/{UP_FILTER}" if config.shared else UP_FILTER


class MqttSource:
    """`async with MqttSource(cfg) as src:` then `batch = await src.next_batch(...)`, `src.ack(batch)`."""

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        kwargs: dict = {}
        if config.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = min(config.receive_maximum, 65535)
            props.SessionExpiryInterval = config.session_expiry_s
            kwargs = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": False, "properties": props}
        else:
            kwargs = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        self._client = aiomqtt.Client(
            config.host,
            config.port,
            identifier=config.client_id,
            username=config.username,
            password=config.password,
            keepalive=30,
            **kwargs,
        )
        if config.manual_ack:
            self._client._client.manual_ack_set(True)

    async def __aenter__(self) -> MqttSource:
        await self._client.__aenter__()
        await self._client.subscribe(subscription(self.config), qos=1)
        log.info(
            "subscribed", extra={"filter": subscription(self.config), "client_id": self.config.client_id}
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(None, None, None)

    def buffered(self) -> int:
        """Messages received from the broker and waiting in the client's queue (not yet in a batch)."""
        return self._client._queue.qsize()

    def _convert(self, m: aiomqtt.Message, now_ms: int) -> Received:
        payload = m.payload if isinstance(m.payload, bytes | bytearray) else str(m.payload).encode()
        return Received(str(m.topic), bytes(payload), m.mid, m.qos, now_ms)

    async def next_batch(self, max_size: int, max_wait_s: float) -> list[Received]:
        """Wait for one message, then gather more until `max_size` or `max_wait_s` has passed."""
        messages = self._client.messages
        first = await anext(messages)
        now_ms = time.time_ns() // 1_000_000
        batch = [self._convert(first, now_ms)]
        deadline = asyncio.get_running_loop().time() + max_wait_s
        queue = self._client._queue  # draining without a task per message is ~3x faster than anext()
        while len(batch) < max_size:
            if not queue.empty():
                batch.append(self._convert(queue.get_nowait(), now_ms))
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                # Not wait_for(anext(messages)): on timeout that cancels a helper task that may already
                # hold a dequeued message, losing it. Queue.get under wait_for keeps or returns the item.
                nxt = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
            now_ms = time.time_ns() // 1_000_000
            batch.append(self._convert(nxt, now_ms))
        return batch

    def ack(self, batch: Sequence[Received]) -> None:
        """Acknowledge in arrival order, after the batch's outcome is committed."""
        if not self.config.manual_ack:
            return
        paho = self._client._client
        for m in batch:
            if m.qos > 0:
                paho.ack(m.mid, m.qos)

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        await self._client.publish(topic, payload, qos=qos)


async def drop_session(host: str, port: int, client_id: str) -> None:
    """Remove a persistent session (clean start, expiry 0) so it stops queueing messages: for a worker
    taken out of service for good, and for tests and the benchmark."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    client = aiomqtt.Client(
        host,
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        properties=props,
    )
    with contextlib.suppress(aiomqtt.MqttError):
        async with client:
            pass
