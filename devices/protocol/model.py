"""Wire types: what a device sends (`Packet`, `Reading`, `Media`, `SignedMessage`), the reason codes
of the service's answers, and the chain registry's view of a device. Immutable: raw and verified data
are different types.

An expected rejection is a returned `Rejection` value; an exception means something broke.
"""

from __future__ import annotations

from dataclasses import dataclass
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
