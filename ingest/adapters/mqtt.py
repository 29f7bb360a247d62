"""MQTT source for the consumer: shared subscription, batches, acknowledgement only after commit.

aiomqtt 2.x has no public manual-ack switch (upstream issue sbtinstruments/aiomqtt#345); its paho
client has `manual_ack_set(True)` and `ack(mid, qos)`, which this adapter wraps. Details that decide whether
ack-after-commit works (docs/DESIGN.md §2):
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
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

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
    password: str | None = field(default=None, repr=False)
    # TLS: on with the system CAs, or with a private CA file; an optional client certificate (+ key).
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
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


def uses_tls(config: MqttConfig) -> bool:
    return bool(config.tls or config.tls_ca_file or config.tls_cert_file)


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The client's TLS context (aiomqtt's `tls_context`), or None for plain TCP. Verifies the broker's
    certificate and hostname: against `tls_ca_file` if given, else the system CAs."""
    if not uses_tls(config):
        return None
    ctx = ssl.create_default_context(cafile=config.tls_ca_file)
    if config.tls_cert_file:
        ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return ctx


def connect_options(config: MqttConfig) -> dict[str, Any]:
    """Login and TLS keyword arguments for `aiomqtt.Client`."""
    return {"username": config.username, "password": config.password, "tls_context": tls_context(config)}


def describe_lost(config: MqttConfig, exc: BaseException) -> str:
    """One line for a connection that dropped: the broker's DISCONNECT reason when it sent one (aiomqtt
    chains it as the cause of "Disconnected during message iteration")."""
    where = f"MQTT connection to {config.host}:{config.port} lost"
    reason: BaseException | None = exc
    while reason is not None:
        rc = getattr(reason, "rc", None)
        if isinstance(rc, ReasonCode):
            # paho reports a closed socket as 0x80 "Unspecified error" (Mosquitto 2.0.11 closes the socket
            # on a restart and on a session takeover alike, without a DISCONNECT reason).
            name = "the broker or the network closed it" if rc.value == 0x80 else rc.getName()
            msg = f"{where}: {name}"
            if rc.value == 0x8E:  # Session taken over
                msg += (
                    f" — another client connected with client id {config.client_id!r} (DEPIN_MQTT_CLIENT_ID)"
                )
            return msg
        reason = reason.__cause__
    return f"{where} ({exc or type(exc).__name__})"


class SubscriptionRefused(aiomqtt.MqttError):
    """The broker answered SUBACK with a failure code (its ACL): the message says what to check."""


# CONNACK codes that mean "your login was refused": MQTT 3.1.1 (4, 5) and MQTT 5 (0x86, 0x87, 0x8C).
_AUTH_REFUSED = {4, 5, 0x86, 0x87, 0x8C}
_V3_CONNACK = {
    1: "Unacceptable protocol version",
    2: "Identifier rejected",
    3: "Server unavailable",
    4: "Bad user name or password",
    5: "Not authorized",
}


def describe_connect_error(config: MqttConfig, exc: BaseException) -> str:
    """One line naming the broker, what it (or the network) said, and what to check."""
    if isinstance(exc, SubscriptionRefused):
        return str(exc)
    where = f"MQTT broker {config.host}:{config.port}"
    rc = getattr(exc, "rc", None)
    if isinstance(exc, MqttConnectError) and rc is not None:
        code = rc.value if isinstance(rc, ReasonCode) else int(rc)
        reason = rc.getName() if isinstance(rc, ReasonCode) else _V3_CONNACK.get(code, f"code {code}")
        msg = f"{where} refused the connection: {reason}"
        if code in _AUTH_REFUSED:
            who = f"user {config.username!r}" if config.username else "anonymous: no username set"
            msg += f" — check DEPIN_MQTT_USERNAME / DEPIN_MQTT_PASSWORD(_FILE) ({who})"
        elif code == 0x85 or code == 2:
            msg += " — check DEPIN_MQTT_CLIENT_ID"
        return msg
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text or "TLS" in text:
        return f"TLS handshake with {where} failed: {text} — check DEPIN_MQTT_TLS_CA_FILE and DEPIN_MQTT_HOST"
    return f"cannot connect to {where}: {text}"


class MqttSource:
    """`async with MqttSource(cfg) as src:` then `batch = await src.next_batch(...)`, `src.ack(batch)`:
    the consumer's `ingest.seams.BrokerSession`, which unit tests replace with an in-memory one."""

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
            keepalive=30,
            **connect_options(config),
            **kwargs,
        )
        if config.manual_ack:
            self._client._client.manual_ack_set(True)

    async def __aenter__(self) -> MqttSource:
        cfg = self.config
        await self._client.__aenter__()
        try:
            granted = await self._client.subscribe(subscription(cfg), qos=1)
            refused = _refused(granted)
            if refused is not None:
                # The broker's ACL does not let this account read the devices' topics: without this
                # check the service would sit connected, receiving nothing.
                raise SubscriptionRefused(
                    f"MQTT broker {cfg.host}:{cfg.port} refused the subscription to {subscription(cfg)}: "
                    f"{refused} — check the broker's ACL gives {cfg.username or 'this client'} read on "
                    f"{UP_FILTER} (`depin broker acl --service-user NAME`)"
                )
        except BaseException:
            await self._client.__aexit__(None, None, None)
            raise
        log.info(
            "connected to MQTT broker %s:%d as client id %s%s%s, subscribed to %s",
            cfg.host,
            cfg.port,
            cfg.client_id,
            f", user {cfg.username}" if cfg.username else "",
            ", TLS" if uses_tls(cfg) else "",
            subscription(cfg),
            extra={"filter": subscription(cfg), "client_id": cfg.client_id},
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


def _refused(granted: Any) -> str | None:
    """A SUBACK's failure reason (MQTT 5 reason code ≥ 0x80, or 3.1.1's 0x80), else None."""
    for code in granted if isinstance(granted, list | tuple) else [granted]:
        value = code.value if isinstance(code, ReasonCode) else code
        if isinstance(value, int) and value >= 0x80:
            return code.getName() if isinstance(code, ReasonCode) else f"code {value:#x}"
    return None


async def drop_session(host: str, port: int, client_id: str, *, login: MqttConfig | None = None) -> None:
    """Remove a persistent session (clean start, expiry 0) so it stops queueing messages: for a worker
    taken out of service for good, and for tests and the benchmark. `login`: username/password/TLS."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    client = aiomqtt.Client(
        host,
        port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        properties=props,
        **(connect_options(login) if login is not None else {}),
    )
    with contextlib.suppress(aiomqtt.MqttError):
        async with client:
            pass
