"""Domain types shared by every stage. Immutable: raw and verified data are different types.

An expected rejection is a returned `Rejection` value; an exception means something broke.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class Reason(StrEnum):
    """Stable rejection/flag reason codes. Stored in `rejections.reason` and used as metric labels."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED_DEVICE = "revoked_device"
    KID_MISMATCH = "kid_mismatch"
    REPLAY = "replay"
    DUPLICATE = "duplicate"
    CLOCK_SKEW = "clock_skew"
    TOO_LATE = "too_late"
    BAD_VALUES = "bad_values"
    RATE_LIMITED = "rate_limited"
    EPOCH_CLOSED = "epoch_closed"  # decided by the store: the packet's epoch was sealed for closing
    # Flags on stored readings (they are kept but earn nothing).
    IMPLAUSIBLE_MOTION = "implausible_motion"
    OFF_LOCATION = "off_location"
    MEDIA_REUSE = "media_reuse"
    FLATLINE = "flatline"
    VALUE_JUMP = "value_jump"


@dataclass(frozen=True, slots=True)
class Media:
    sha256: bytes
    uri: str


class Reading(NamedTuple):
    """One timestamped, located measurement. A NamedTuple rather than a frozen dataclass: as immutable,
    and built about three times faster (the decoder builds one per reading received)."""

    ts_ms: int
    lat: float
    lon: float
    vals: dict[str, float | int]
    acc: float | None = None
    alt: float | None = None
    media: Media | None = None


@dataclass(frozen=True, slots=True)
class Packet:
    """The signed payload: one device's batch of 1..256 readings sharing one signature."""

    v: int
    dev: bytes
    seq: int
    kind: str
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A decoded COSE_Sign1 envelope whose signature has NOT been checked yet."""

    kid: bytes
    protected: bytes  # the protected header bstr exactly as sent (part of Sig_structure)
    payload: bytes  # the payload bstr exactly as sent (what the signature covers)
    signature: bytes
    packet: Packet


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """The registry mirror's view of one device (from chain events)."""

    device_id: bytes
    pubkey: bytes
    owner: str  # checksummed 0x address
    hw_class: int
    asserted_cell: int  # H3 index, 0 for mobile devices
    active: bool
    registered_block: int = 0


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
