"""Publishing a simulated fleet (fleet.py) to an MQTT broker: QoS 1 streams with many messages in
flight, and raw (topic, bytes) pairs for forged, replayed or malformed messages."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from devices.sdk import BrokerLogin
from simulator.fleet import SimDevice, next_message

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamStats:
    sent: int
    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def unique_client_id(prefix: str = "sim") -> str:
    return f"{prefix}-{os.getpid()}-{os.urandom(4).hex()}"


def publisher(
    host: str,
    port: int,
    *,
    mqtt5: bool = True,
    inflight: int = 100,
    client_id: str | None = None,
    login: BrokerLogin | None = None,
) -> aiomqtt.Client:
    """A QoS1 publishing client that lets `inflight` messages await their PUBACK at once. `login`: a
    device's username/password (+TLS) for a secured broker, where it may publish on its own topic only."""
    client = aiomqtt.Client(
        host,
        port,
        **(login.client_kwargs() if login is not None else {}),
        identifier=client_id or unique_client_id(),
        protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
        # paho's own default is 20 in flight; messages beyond it wait in paho's queue, serialising
        # the round trips. Must stay ≤ the broker's Receive Maximum (Mosquitto: max_inflight_messages).
        max_inflight_messages=inflight,
        timeout=30,
    )
    client.pending_calls_threshold = inflight + 1  # aiomqtt warns above 10 pending publishes
    return client


# CONNACK reason codes for "this broker does not speak that protocol version": 1 (3.1.1), 0x84 (v5).
_UNSUPPORTED_PROTOCOL = {1, 0x84}


@asynccontextmanager
async def connected_publisher(
    host: str, port: int, *, mqtt5: bool | None = None, inflight: int = 100, login: BrokerLogin | None = None
) -> AsyncIterator[aiomqtt.Client]:
    """A connected publisher. `mqtt5=None`: MQTT 5, or 3.1.1 if the broker refuses 5 (amqtt does)."""
    client = publisher(host, port, mqtt5=mqtt5 is not False, inflight=inflight, login=login)
    try:
        await client.__aenter__()
    except MqttConnectError as exc:
        code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
        if mqtt5 is not None or code not in _UNSUPPORTED_PROTOCOL:
            raise
        client = publisher(host, port, mqtt5=False, inflight=inflight, login=login)
        await client.__aenter__()
    try:
        yield client
    finally:
        await client.__aexit__(None, None, None)


def wall_ms() -> int:
    """The stream's default clock: messages stamped now."""
    return time.time_ns() // 1_000_000


async def stream(
    fleet: Sequence[SimDevice],
    host: str,
    port: int,
    *,
    packets_per_device: int,
    readings_per_packet: int = 1,
    interval_ms: int = 1000,
    rate_per_s: float | None = None,
    clock: Callable[[], int] = wall_ms,
    progress: Callable[[int, int], None] | None = None,
    progress_every: int = 1000,
    mqtt5: bool | None = None,
    inflight: int = 100,
    login: BrokerLogin | None = None,
) -> StreamStats:
    """Publish `packets_per_device` packets per device, round-robin, QoS 1; return when all are PUBACKed.

    aiomqtt's `publish` awaits the PUBACK, so each publish runs as its own task and a semaphore bounds
    how many wait at once. Tasks start in creation order and paho writes a message when `publish` is
    called, so each device's packets reach the broker in seq order. `clock` gives the messages' `now_ms`
    (wall clock by default; pass a fake one to backdate a stream into a past epoch). `mqtt5=None`
    tries MQTT 5 and falls back to 3.1.1 if the broker refuses it (amqtt). ~100 in flight is the sweet
    spot: paho and aiomqtt both scan their pending lists per PUBACK, so more costs more CPU. `login`
    logs in as one device: a secured broker lets it publish its own topic only (a one-device fleet).
    """
    total = packets_per_device * len(fleet)
    sem = asyncio.Semaphore(inflight)
    pending: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []
    sent = nbytes = 0
    loop = asyncio.get_running_loop()

    async def one(client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1)
        finally:
            sem.release()

    def done(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            errors.append(exc)

    async with connected_publisher(host, port, mqtt5=mqtt5, inflight=inflight, login=login) as client:
        start = loop.time()
        try:
            for _ in range(packets_per_device):
                for dev in fleet:
                    if errors:
                        raise errors[0]
                    if rate_per_s:
                        delay = start + sent / rate_per_s - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    payload = next_message(dev, clock(), readings_per_packet, interval_ms)
                    await sem.acquire()
                    task = asyncio.create_task(one(client, dev.topic, payload))
                    pending.add(task)
                    task.add_done_callback(done)
                    sent += 1
                    nbytes += len(payload)
                    if progress is not None and sent % progress_every == 0:
                        progress(sent, total)
            if pending:
                await asyncio.wait(set(pending))
            if errors:
                raise errors[0]
        finally:
            for task in pending:
                task.cancel()
        seconds = loop.time() - start
    if progress is not None and sent % progress_every:
        progress(sent, total)
    log.info("stream done", extra={"sent": sent, "bytes": nbytes, "seconds": round(seconds, 3)})
    return StreamStats(sent=sent, bytes=nbytes, seconds=seconds)


async def publish_raw(
    host: str,
    port: int,
    items: Sequence[tuple[str, bytes]],
    *,
    mqtt5: bool | None = None,
    qos: int = 1,
    login: BrokerLogin | None = None,
) -> None:
    """Publish arbitrary (topic, bytes) pairs in order — forged, replayed or malformed messages."""
    async with connected_publisher(host, port, mqtt5=mqtt5, login=login) as client:
        # Sequential on purpose: a few messages, and tests care about their order.
        for topic, payload in items:
            await client.publish(topic, payload, qos=qos)
