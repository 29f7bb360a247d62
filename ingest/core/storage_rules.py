"""What each packet of a batch becomes in the store: the rules `IngestStore.write_batch` applies.

The store's SQL does the atomic part: one `INSERT … ON CONFLICT DO NOTHING` decides, across workers,
which copy of a (device, seq) is stored, and the seal watermark is read under the seal lock. What is
left is a decision over plain values, made here: which copy of a key in the batch goes to the INSERT
(the first storable one), what the schema cannot hold at all, and, from what the SQL returned,
whether a copy is stored, a duplicate, a replay or refused because its epoch is closed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from ingest.model import AcceptedPacket

# What the schema holds: seq is a bigint, a reading's index a smallint, H3 cells bigints (H3's top bit
# is reserved 0, so every index fits), timestamps Python datetimes (the last is 9999-12-31T23:59:59.999Z).
INT64_MAX = 2**63 - 1
SMALLINT_MAX = 32_767
MAX_TS_MS = 253_402_300_799_999

Key = tuple[bytes, int]


class Outcome(StrEnum):
    """What one copy of a packet became. Only STORED copies add readings."""

    STORED = "stored"  # inserted by this batch
    DUPLICATE = "duplicate"  # the same payload is stored under its (device, seq): counted only
    REPLAY = "replay"  # another payload is stored under its (device, seq): rejection `replay`
    EPOCH_CLOSED = "epoch_closed"  # nothing is stored: the seal refused it, rejection `epoch_closed`


def packet_outcome(digest: bytes, stored_digest: bytes | None, *, inserted_here: bool = False) -> Outcome:
    """The outcome of one copy with payload digest `digest`, from what the batch's SQL returned.

    `stored_digest`: the payload digest stored under the copy's (device, seq) after the INSERT, None
    when nothing is (the INSERT skips a packet whose first reading is before the seal watermark, and
    a packet already stored is never refused: a redelivery stays a duplicate after its epoch closed).
    `inserted_here`: this copy is the one the INSERT stored (only a key's first copy in the batch is
    offered to it). Equal digests are the same signed payload sent again: a duplicate, not an attack.
    """
    if inserted_here:
        return Outcome.STORED
    if stored_digest is None:
        return Outcome.EPOCH_CLOSED
    if stored_digest == digest:
        return Outcome.DUPLICATE
    return Outcome.REPLAY


def unstorable(p: AcceptedPacket) -> str | None:
    """Why this packet cannot be represented in the schema (the pipeline's limits should prevent it)."""
    if not 0 <= p.seq <= INT64_MAX:
        return f"seq {p.seq} outside 0..2^63-1"
    if len(p.readings) > SMALLINT_MAX:
        return f"{len(p.readings)} readings do not fit a smallint index"
    if p.readings:
        ts = [r.ts_ms for r in p.readings]
        for bad in (min(ts), max(ts)):
            if not 0 <= bad <= MAX_TS_MS:
                return f"timestamp {bad} ms cannot be stored"
    if p.cells:
        for bad in (min(p.cells), max(p.cells)):
            if not 0 <= bad <= INT64_MAX:
                return f"cell {bad} is not an H3 index"
    return None


@dataclass(frozen=True, slots=True)
class BatchSplit:
    """A batch's packets before the SQL: `first` goes to the INSERT, `repeats` are judged against it."""

    first: dict[Key, AcceptedPacket] = field(default_factory=dict)  # first storable copy of each key
    repeats: list[AcceptedPacket] = field(default_factory=list)  # later copies of a key in `first`
    unstorable: list[tuple[AcceptedPacket, str]] = field(default_factory=list)  # (packet, why)


def split_batch(accepted: Iterable[AcceptedPacket]) -> BatchSplit:
    """Within a batch the first storable copy of a (device, seq) wins; a copy the schema cannot hold is
    set apart (it becomes a `malformed` rejection rather than failing the batch forever). Raises
    ValueError if a packet's cells and readings differ in length (a caller bug)."""
    out = BatchSplit()
    for p in accepted:
        if len(p.cells) != len(p.readings):
            raise ValueError(f"packet {p.device_id.hex()}/{p.seq}: one cell per reading expected")
        key = (p.device_id, p.seq)
        if key in out.first:
            out.repeats.append(p)
        elif (problem := unstorable(p)) is not None:
            out.unstorable.append((p, problem))
        else:
            out.first[key] = p
    return out
