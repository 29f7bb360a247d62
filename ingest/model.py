"""The service's own types, built on the wire types of `devices.protocol.model`.

An expected rejection is a returned `Rejection` value; an exception means something broke.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from devices.protocol.model import Reading, Reason


@dataclass(frozen=True, slots=True)
class AcceptedPacket:
    """A packet that passed decode, verify and rules, ready to store. `cells` is one H3 cell per reading."""

    device_id: bytes
    seq: int
    kind: str
    payload_digest: bytes  # sha256(payload bytes): equal digests = duplicate, different = replay
    received_ms: int
    readings: tuple[Reading, ...]
    cells: tuple[int, ...]
    flags: tuple[int, ...]  # bit set per reading (see ingest.core.rules.FLAG_*), 0 = clean
    message_digest: bytes = b""  # sha256(raw message bytes): keys the rejection row if it is a replay
    envelope: bytes = b""  # the raw message (signed COSE_Sign1) as received: kept as provenance


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    """A message that will not be stored as readings. `message_digest` = sha256(raw message bytes)."""

    message_digest: bytes
    device_id: bytes | None  # from topic/kid when it could be read
    seq: int | None
    reason: Reason
    detail: str
    received_ms: int
    topic: str = ""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What the store did with a batch: per packet, stored or not (duplicate/replay/epoch_closed)."""

    stored: int
    readings: int
    duplicates: list[tuple[bytes, int]] = field(default_factory=list)
    replays: list[tuple[bytes, int]] = field(default_factory=list)
    # New packets refused because their epoch is closed (rejection `epoch_closed`), one per occurrence.
    epoch_closed: list[tuple[bytes, int]] = field(default_factory=list)
    rejections: int = 0
    # Media hashes this batch found sent by more than one device (their readings are now flagged).
    reused_media: list[bytes] = field(default_factory=list)
    # Seconds the statement locking the batch's `device_state` rows took (waiting on other workers'
    # batches that hold some of them); None when the batch judged no stateful rules in the store.
    state_lock_s: float | None = None


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """One device's coverage of one H3 cell in one epoch: the unit the reward split works on.

    `readings` counts clean readings, `flagged` the readings that carried any flag (they earn nothing
    and lower the device's quality).
    """

    device_id: bytes
    owner: str
    hw_class: int
    cell: int
    readings: int
    flagged: int
    registered_block: int
