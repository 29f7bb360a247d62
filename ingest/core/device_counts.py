"""What a batch adds to each device's per-epoch counts, pure: the rows the store adds to
`device_epoch_counts` (migration 010) in the batch's transaction, behind the owner views
(GET /v1/devices/{id}, GET /v1/owners/{address}/devices).

A stored reading counts in its timestamp's epoch (as the rewards count it), and as `flagged` when it
carries any flag, media reuse included (decided by the store in the same batch); a stored packet counts
in its first reading's epoch, and its receipt time is the device's `last_seen`. Rejections are counted
by the store's SQL (the rows it newly wrote) and added here per (device, epoch of receipt).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from ingest.core.metering import epoch_of
from ingest.core.rules import FLAG_MEDIA_REUSE
from ingest.model import AcceptedPacket

Key = tuple[bytes, int]  # (device_id, epoch)


@dataclass(slots=True)
class EpochCount:
    packets: int = 0
    readings: int = 0
    flagged: int = 0
    rejected: int = 0
    last_seen_ms: int | None = None


def count_stored(
    packets: Iterable[AcceptedPacket],
    reused_media: Set[bytes],
    genesis_ms: int,
    length_ms: int,
    into: dict[Key, EpochCount] | None = None,
) -> dict[Key, EpochCount]:
    """Add newly stored packets to `into` (a new dict by default) and return it."""
    out: dict[Key, EpochCount] = {} if into is None else into
    for p in packets:
        if not p.readings:
            continue
        first = epoch_of(p.readings[0].ts_ms, genesis_ms, length_ms)
        c = _at(out, (p.device_id, first))
        c.packets += 1
        if c.last_seen_ms is None or p.received_ms > c.last_seen_ms:
            c.last_seen_ms = p.received_ms
        media = any(r.media is not None for r in p.readings)
        if not media and epoch_of(p.readings[-1].ts_ms, genesis_ms, length_ms) == first:
            # The common case: one epoch, flags as judged (readings are in time order).
            c.readings += len(p.readings)
            c.flagged += sum(1 for f in p.flags if f)
            continue
        n_flags = len(p.flags)
        for i, r in enumerate(p.readings):
            flag = p.flags[i] if i < n_flags else 0
            if r.media is not None and r.media.sha256 in reused_media:
                flag |= FLAG_MEDIA_REUSE
            e = _at(out, (p.device_id, epoch_of(r.ts_ms, genesis_ms, length_ms)))
            e.readings += 1
            e.flagged += 1 if flag else 0
    return out


def count_rejected(
    rows: Iterable[tuple[bytes | None, int, int]], into: dict[Key, EpochCount] | None = None
) -> dict[Key, EpochCount]:
    """Add (device_id, epoch, rejection rows) to `into`; rows without a device id are not counted."""
    out: dict[Key, EpochCount] = {} if into is None else into
    for device_id, epoch, n in rows:
        if device_id is not None:
            _at(out, (device_id, epoch)).rejected += n
    return out


def _at(counts: dict[Key, EpochCount], key: Key) -> EpochCount:
    c = counts.get(key)
    if c is None:
        c = counts[key] = EpochCount()
    return c
