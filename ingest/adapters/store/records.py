"""What a batch writes, as plain values: the records COPY takes for readings, and the rejections the
store itself adds (replay, epoch_closed, malformed) in the caller's `RejectedMessage` form."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from devices.protocol.model import Reason
from ingest.core.rules import FLAG_MEDIA_REUSE
from ingest.model import AcceptedPacket, RejectedMessage

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_F32_MAX = 3.4028234663852886e38


def text(s: str) -> str:
    # PostgreSQL text cannot hold U+0000; one NUL in a detail or uri must not fail a whole batch.
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sealed_detail(first_ts: datetime | None, sealed_until: datetime | None, sealed_epoch: int | None) -> str:
    first = "?" if first_ts is None else _iso(first_ts)
    until = "?" if sealed_until is None else _iso(sealed_until)
    return f"first reading {first} is in a closed epoch (epochs ≤ {sealed_epoch} sealed until {until})"


def as_rejection(p: AcceptedPacket, reason: Reason, detail: str) -> RejectedMessage:
    # Without a message digest from the caller, derive a stable one so a re-run stays idempotent.
    digest = p.message_digest or _fallback_digest(p)
    return RejectedMessage(
        message_digest=digest,
        device_id=p.device_id,
        seq=p.seq,
        reason=reason,
        detail=detail,
        received_ms=p.received_ms,
    )


def _fallback_digest(p: AcceptedPacket) -> bytes:
    return hashlib.sha256(b"depin-packet\x00" + p.device_id + str(p.seq).encode() + p.payload_digest).digest()


def reading_records(
    p: AcceptedPacket, reused_media: set[bytes] | frozenset[bytes] = frozenset()
) -> list[tuple[Any, ...]]:
    # Once per stored reading: locals hoisted, timestamps built inline (`storage_rules.unstorable`
    # checked their range), acc/alt are `real`: asyncpg refuses out-of-range floats, which would fail
    # the whole batch, so they become NULL (the comparison is false for NaN and ±inf too).
    kind = text(p.kind)
    flags, cells, device_id, seq = p.flags, p.cells, p.device_id, p.seq
    n_flags = len(flags)
    epoch, td, f32_max = _EPOCH, timedelta, _F32_MAX
    out = []
    for i, (ts_ms, lat, lon, vals, acc, alt, media) in enumerate(p.readings):
        out.append(
            (
                epoch + td(0, 0, ts_ms * 1000),
                device_id,
                seq,
                i,
                lat,
                lon,
                acc if acc is None or -f32_max <= acc <= f32_max else None,
                alt if alt is None or -f32_max <= alt <= f32_max else None,
                cells[i],
                kind,
                vals,
                None if media is None else media.sha256,
                None if media is None else text(media.uri),
                (flags[i] if i < n_flags else 0)
                | (FLAG_MEDIA_REUSE if media is not None and media.sha256 in reused_media else 0),
            )
        )
    return out
