"""The data path in one place: decode → verify → rate → rules → flags → cells. One outcome per message.

No I/O here: the consumer hands in a batch of raw MQTT messages, a registry lookup and the
`PipelineState` it keeps between batches, and gets back the packets to store and the rejections to
record. Storing them (and learning which packets were duplicates or replays) is the store's job;
acknowledging them after that commit is the consumer's.

The rate limit runs after the signature check, so nobody can spend another device's tokens, and
before the time and value rules, so every authenticated packet is charged. Only accepted packets
advance a device's track (last position, value runs). Media reuse is not decided here: the store
decides it in the batch's transaction (docs/DESIGN.md §5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from devices.protocol import codec
from devices.protocol.hwclass import DEFAULT_CLASSES, HwClass
from devices.protocol.model import DeviceRecord, Reason, Rejection
from devices.protocol.topics import device_from_topic
from ingest.core import plausibility, rules
from ingest.core.geo import cells_for
from ingest.core.ratelimit import RateLimit, packet_clock_ms
from ingest.core.rejection_budget import UNSIGNED
from ingest.core.state import PipelineState
from ingest.core.verify import verify
from ingest.model import AcceptedPacket, RejectedMessage

__all__ = [
    "REJECTION_REASONS",
    "Incoming",
    "PipelineConfig",
    "PipelineState",
    "Sorted",
    "judge",
    "sort_batch",
]

# Every reason `judge` can reject with. The store adds `replay` and `epoch_closed` (and counts
# `duplicate`); the reading flags are rules.FLAG_NAMES. The README's table lists exactly these
# (tests/unit/test_rules.py checks).
# The unsigned ones (decided before the signature is known good) are the rejection budget's.
REJECTION_REASONS: frozenset[Reason] = frozenset(
    {Reason(r) for r in UNSIGNED}
    | {Reason.RATE_LIMITED, Reason.BAD_VALUES, Reason.CLOCK_SKEW, Reason.TOO_LATE}
)


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    received_ms: int


@dataclass(slots=True)
class Sorted:
    """A batch split by outcome.

    Media reuse is not flagged here: it needs every hash ever stored, so the store decides it in the
    batch's transaction (`ingest/core/media.py`).
    """

    accepted: list[AcceptedPacket] = field(default_factory=list)
    rejected: list[RejectedMessage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    max_message_bytes: int = codec.MAX_MESSAGE_BYTES
    time_limits: rules.TimeLimits = field(default_factory=rules.TimeLimits)
    classes: Mapping[int, HwClass] = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    rate_limit: RateLimit | None = field(default_factory=RateLimit)  # None: no per-device limit
    quality: plausibility.QualityLimits = field(default_factory=plausibility.QualityLimits)


def judge(
    msg: Incoming,
    lookup: Callable[[bytes], DeviceRecord | None],
    now_ms: int,
    config: PipelineConfig,
    state: PipelineState | None = None,
) -> AcceptedPacket | RejectedMessage:
    """One message → one outcome. Never raises for bad input.

    Without a `state` the message is judged on its own (a fresh, full bucket and no history).
    """
    state = state if state is not None else PipelineState(max_devices=1)
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
    dev_state = state.device(device.device_id)
    if config.rate_limit is not None:
        limits = config.time_limits
        at_ms = packet_clock_ms(packet, msg.received_ms, limits.max_future_ms, limits.max_lateness_ms)
        if not dev_state.bucket.admit(packet.seq, at_ms, config.rate_limit):
            rate = config.rate_limit
            detail = f"over {rate.per_second:g} packets/s (burst {rate.burst:g}) of device time"
            return reject(Rejection(Reason.RATE_LIMITED, detail), packet.seq)
    if (rej := rules.check_packet(packet, now_ms, config.time_limits)) is not None:
        return reject(rej, packet.seq)
    flags = plausibility.assess(packet.readings, hw, device.asserted_cell, dev_state.track, config.quality)
    return AcceptedPacket(
        device_id=device.device_id,
        seq=packet.seq,
        kind=packet.kind,
        payload_digest=hashlib.sha256(decoded.payload).digest(),
        received_ms=msg.received_ms,
        readings=packet.readings,
        cells=cells_for(((r.lat, r.lon) for r in packet.readings), hw.h3_res),
        flags=flags,
        message_digest=message_digest,
        envelope=msg.payload,
    )


def sort_batch(
    batch: Sequence[Incoming],
    lookup: Callable[[bytes], DeviceRecord | None],
    now_ms: int,
    config: PipelineConfig,
    state: PipelineState | None = None,
) -> Sorted:
    """Judge a batch in order, against and into `state` (the consumer keeps it between batches).

    Without a `state` the batch is judged with a fresh one (no history from earlier batches).
    """
    state = state if state is not None else PipelineState()
    out = Sorted()
    for msg in batch:
        outcome = judge(msg, lookup, now_ms, config, state)
        if isinstance(outcome, AcceptedPacket):
            out.accepted.append(outcome)
        else:
            out.rejected.append(outcome)
    return out
