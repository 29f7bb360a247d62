"""The data path in one place: decode → verify → rules → cells. Every message gets exactly one outcome.

No I/O here: the consumer hands in a batch of raw MQTT messages and a registry lookup, and gets back
the packets to store and the rejections to record. Storing them (and learning which packets were
duplicates or replays) is the store's job; acknowledging them after that commit is the consumer's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ingest.core import codec, rules
from ingest.core.geo import cell_for
from ingest.core.hwclass import DEFAULT_CLASSES, HwClass
from ingest.core.verify import device_from_topic, verify
from ingest.model import AcceptedPacket, DeviceRecord, Reason, RejectedMessage, Rejection


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    received_ms: int


@dataclass(slots=True)
class Sorted:
    """A batch split by outcome. `index` maps each accepted packet back to its position in the batch."""

    accepted: list[AcceptedPacket] = field(default_factory=list)
    rejected: list[RejectedMessage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    max_message_bytes: int = codec.MAX_MESSAGE_BYTES
    time_limits: rules.TimeLimits = field(default_factory=rules.TimeLimits)
    classes: Mapping[int, HwClass] = field(default_factory=lambda: dict(DEFAULT_CLASSES))


def judge(
    msg: Incoming,
    lookup: Callable[[bytes], DeviceRecord | None],
    now_ms: int,
    config: PipelineConfig,
) -> AcceptedPacket | RejectedMessage:
    """One message → one outcome. Never raises for bad input."""
    message_digest = hashlib.sha256(msg.payload).digest()
    topic_device = device_from_topic(msg.topic)

    def reject(rej: Rejection, seq: int | None = None) -> RejectedMessage:
        return RejectedMessage(
            message_digest=message_digest,
            device_id=topic_device,
            seq=seq,
            reason=rej.reason,
            detail=rej.detail,
            received_ms=msg.received_ms,
            topic=msg.topic[:200],
        )

    decoded = codec.decode(msg.payload, max_bytes=config.max_message_bytes)
    if isinstance(decoded, Rejection):
        return reject(decoded)
    packet = decoded.packet
    device = verify(decoded, topic_device, lookup)
    if isinstance(device, Rejection):
        return reject(device, packet.seq)
    hw = config.classes.get(device.hw_class)
    if hw is None:
        return reject(Rejection(Reason.MALFORMED, f"device hardware class {device.hw_class} is unknown"))
    if packet.kind != hw.name:
        return reject(
            Rejection(Reason.MALFORMED, f"kind {packet.kind!r} but the device is registered as {hw.name!r}"),
            packet.seq,
        )
    if (rej := rules.check_packet(packet, now_ms, config.time_limits)) is not None:
        return reject(rej, packet.seq)
    return AcceptedPacket(
        device_id=device.device_id,
        seq=packet.seq,
        kind=packet.kind,
        payload_digest=hashlib.sha256(decoded.payload).digest(),
        received_ms=msg.received_ms,
        readings=packet.readings,
        cells=tuple(cell_for(r.lat, r.lon, hw.h3_res) for r in packet.readings),
        flags=tuple(rules.value_flags(packet.kind, r) for r in packet.readings),
        message_digest=message_digest,
    )


def sort_batch(
    batch: Sequence[Incoming],
    lookup: Callable[[bytes], DeviceRecord | None],
    now_ms: int,
    config: PipelineConfig,
) -> Sorted:
    out = Sorted()
    for msg in batch:
        outcome = judge(msg, lookup, now_ms, config)
        if isinstance(outcome, AcceptedPacket):
            out.accepted.append(outcome)
        else:
            out.rejected.append(outcome)
    return out
