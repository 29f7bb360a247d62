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
from devices.protocol.model import DeviceRecord, Packet, Reason, Rejection
from devices.protocol.topics import device_from_topic
from ingest.core import plausibility, rules
from ingest.core.geo import cells_for
from ingest.core.ratelimit import RateLimit, packet_clock_ms
from ingest.core.rejection_budget import UNSIGNED
from ingest.core.state import DeviceState, PipelineState
from ingest.core.verify import verify
from ingest.model import AcceptedPacket, RejectedMessage

__all__ = [
    "REJECTION_REASONS",
    "Incoming",
    "Pending",
    "PipelineConfig",
    "PipelineState",
    "Sorted",
    "Verified",
    "finish",
    "judge",
    "prejudge",
    "prejudge_batch",
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


@dataclass(frozen=True, slots=True)
class Verified:
    """A message past everything that needs no per-device state (decode, verify, class, time and value
    rules, cells): what is left to judge is the rate limit and the flags that compare with the device's
    history (`finish`). `problem` is the packet-level rule's rejection, applied only after the rate
    limit has charged the packet."""

    msg: Incoming
    message_digest: bytes
    topic_device: bytes | None
    packet: Packet
    payload_digest: bytes
    device: DeviceRecord
    hw: HwClass
    problem: Rejection | None
    cells: tuple[int, ...]


def _rejected(
    msg: Incoming, message_digest: bytes, topic_device: bytes | None, rej: Rejection, seq: int | None
) -> RejectedMessage:
    return RejectedMessage(
        message_digest=message_digest,
        device_id=topic_device,
        seq=seq,
        reason=rej.reason,
        detail=rej.detail,
        received_ms=msg.received_ms,
        topic=msg.topic[:200],
    )


def prejudge(
    msg: Incoming,
    lookup: Callable[[bytes], DeviceRecord | None],
    now_ms: int,
    config: PipelineConfig,
) -> Verified | RejectedMessage:
    """The stateless part of `judge`: a rejection, or what `finish` needs. Never raises for bad input."""
    message_digest = hashlib.sha256(msg.payload).digest()
    topic_device = device_from_topic(msg.topic)
    decoded = codec.decode(msg.payload, max_bytes=config.max_message_bytes)
    if isinstance(decoded, Rejection):
        return _rejected(msg, message_digest, topic_device, decoded, None)
    packet = decoded.packet
    device = verify(decoded, topic_device, lookup)
    if isinstance(device, Rejection):
        return _rejected(msg, message_digest, topic_device, device, packet.seq)
    hw = config.classes.get(device.hw_class)
    if hw is None:
        rej = Rejection(Reason.MALFORMED, f"device hardware class {device.hw_class} is unknown")
        return _rejected(msg, message_digest, topic_device, rej, None)
    if packet.kind != hw.name:
        rej = Rejection(Reason.MALFORMED, f"kind {packet.kind!r} but the device is registered as {hw.name!r}")
        return _rejected(msg, message_digest, topic_device, rej, packet.seq)
    problem = rules.check_packet(packet, now_ms, config.time_limits)
    return Verified(
        msg,
        message_digest,
        topic_device,
        packet,
        hashlib.sha256(decoded.payload).digest(),
        device,
        hw,
        problem,
        () if problem is not None else cells_for(((r.lat, r.lon) for r in packet.readings), hw.h3_res),
    )


def finish(v: Verified, dev_state: DeviceState, config: PipelineConfig) -> AcceptedPacket | RejectedMessage:
    """The stateful part of `judge`, against and into one device's state: rate limit, then the packet
    rules' verdict, then the flags that compare with the device's history."""
    packet, msg = v.packet, v.msg
    if config.rate_limit is not None:
        limits = config.time_limits
        at_ms = packet_clock_ms(packet, msg.received_ms, limits.max_future_ms, limits.max_lateness_ms)
        if not dev_state.bucket.admit(packet.seq, at_ms, config.rate_limit):
            rate = config.rate_limit
            detail = f"over {rate.per_second:g} packets/s (burst {rate.burst:g}) of device time"
            rej = Rejection(Reason.RATE_LIMITED, detail)
            return _rejected(msg, v.message_digest, v.topic_device, rej, packet.seq)
    if v.problem is not None:
        return _rejected(msg, v.message_digest, v.topic_device, v.problem, packet.seq)
    flags = plausibility.assess(
        packet.readings, v.hw, v.device.asserted_cell, dev_state.track, config.quality
    )
    return AcceptedPacket(
        device_id=v.device.device_id,
        seq=packet.seq,
        kind=packet.kind,
        payload_digest=v.payload_digest,
        received_ms=msg.received_ms,
        readings=packet.readings,
        cells=v.cells,
        flags=flags,
        message_digest=v.message_digest,
        envelope=msg.payload,
    )


def judge(
    msg: Incoming,
    lookup: Callable[[bytes], DeviceRecord | None],
    now_ms: int,
    config: PipelineConfig,
    state: PipelineState | None = None,
) -> AcceptedPacket | RejectedMessage:
    """One message → one outcome (`prejudge`, then `finish` against the device's state). Never raises
    for bad input.

    Without a `state` the message is judged on its own (a fresh, full bucket and no history).
    """
    v = prejudge(msg, lookup, now_ms, config)
    if isinstance(v, RejectedMessage):
        return v
    state = state if state is not None else PipelineState(max_devices=1)
    return finish(v, state.device(v.device.device_id), config)


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


@dataclass(slots=True)
class Pending:
    """A batch's verified messages, in arrival order, whose stateful judging waits for their devices'
    state: the store calls `finish` inside the batch's transaction with the state rows it locked
    (`IngestStore.write_batch`, docs/DESIGN.md §2). `finish` may run again on a retried transaction,
    always from the states it is handed; `result` holds the last run's outcome."""

    config: PipelineConfig
    items: list[Verified] = field(default_factory=list)
    result: Sorted = field(default_factory=Sorted)

    @property
    def devices(self) -> list[bytes]:
        """The batch's verified devices, sorted: the order the state rows are locked in."""
        return sorted({v.device.device_id for v in self.items})

    @property
    def packets(self) -> list[Packet]:
        return [v.packet for v in self.items]

    def finish(self, states: Mapping[bytes, DeviceState]) -> Sorted:
        out = Sorted()
        for v in self.items:
            outcome = finish(v, states[v.device.device_id], self.config)
            if isinstance(outcome, AcceptedPacket):
                out.accepted.append(outcome)
            else:
                out.rejected.append(outcome)
        self.result = out
        return out


def prejudge_batch(
    batch: Sequence[Incoming],
    lookup: Callable[[bytes], DeviceRecord | None],
    now_ms: int,
    config: PipelineConfig,
) -> tuple[list[RejectedMessage], Pending]:
    """The stateless part of `sort_batch`: the rejections it decides alone, and the rest for `finish`."""
    rejected: list[RejectedMessage] = []
    pending = Pending(config)
    for msg in batch:
        v = prejudge(msg, lookup, now_ms, config)
        if isinstance(v, RejectedMessage):
            rejected.append(v)
        else:
            pending.items.append(v)
    return rejected, pending
