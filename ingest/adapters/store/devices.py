"""Provenance and owner views: one packet with its signed envelope and its readings; a device's registry
row with its per-epoch counts; an owner's fleet, page by page. And what a batch adds to those counts
(`add_device_counts`, run by `IngestStore.write_batch` in the batch's transaction).

Every query is bounded by an index: `packets` by its key, the packet's readings by `readings_device_ts`
(device hash, ts) from the packet's first reading, the counts by `device_epoch_counts`' key (device, epoch)
newest first, an owner's devices by `devices_owner_device` (owner, device_id) (migration 010).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

from ingest.adapters.store.rows import PoolStore, ReadingRow, bytes_or_none, dt_to_ms, ms_to_dt
from ingest.core.device_counts import EpochCount, Key

_READING_SELECT = (
    "ts, device_id, seq, idx, lat, lon, acc, alt, cell, kind, vals, media_sha256, media_uri, flags"
)
_DEVICE_SELECT = """SELECT d.device_id, d.owner, d.hw_class, h.name AS kind, d.asserted_cell, d.active,
                           d.registered_block
                    FROM devices d LEFT JOIN hw_classes h ON h.id = d.hw_class"""
# A device's newest `$2` epochs with any count (shards summed), newest first.
_COUNTS = """SELECT epoch, sum(packets)::bigint AS packets, sum(readings)::bigint AS readings,
                    sum(flagged)::bigint AS flagged, sum(rejected)::bigint AS rejected,
                    max(last_seen) AS last_seen
             FROM device_epoch_counts WHERE device_id = {device} GROUP BY epoch ORDER BY epoch DESC
             LIMIT $2"""


class PacketRow(NamedTuple):
    device_id: bytes
    seq: int
    kind: str
    payload_digest: bytes
    received_ms: int
    envelope: bytes | None  # the signed COSE_Sign1 message as received; None if stored before 010
    readings: list[ReadingRow]


class EpochCounts(NamedTuple):
    epoch: int
    packets: int
    readings: int
    flagged: int
    rejected: int


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device as its owner sees it. `registered` False: not in the registry mirror (counts only)."""

    device_id: bytes
    registered: bool
    owner: str | None
    hw_class: int | None
    kind: str | None  # the hardware class's name, None if the mirror does not hold the class
    asserted_cell: int | None
    active: bool | None
    registered_block: int | None
    last_seen_ms: int | None
    epochs: list[EpochCounts]  # newest first


async def add_device_counts(conn: asyncpg.Connection, shard: int, counts: dict[Key, EpochCount]) -> None:
    """Add a batch's per-(device, epoch) counts to the writer's shard (one UPSERT, keys sorted so two
    writers on one shard lock rows in the same order)."""
    if not counts:
        return
    keys = sorted(counts)
    cs = [counts[k] for k in keys]
    await conn.execute(
        """INSERT INTO device_epoch_counts
               (device_id, epoch, shard, packets, readings, flagged, rejected, last_seen)
           SELECT d, e, $3, p, r, f, j, l
           FROM unnest($1::bytea[], $2::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                       $8::timestamptz[]) AS u(d, e, p, r, f, j, l)
           ON CONFLICT (device_id, epoch, shard) DO UPDATE SET
               packets = device_epoch_counts.packets + excluded.packets,
               readings = device_epoch_counts.readings + excluded.readings,
               flagged = device_epoch_counts.flagged + excluded.flagged,
               rejected = device_epoch_counts.rejected + excluded.rejected,
               last_seen = greatest(device_epoch_counts.last_seen, excluded.last_seen)""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        shard,
        [c.packets for c in cs],
        [c.readings for c in cs],
        [c.flagged for c in cs],
        [c.rejected for c in cs],
        [None if c.last_seen_ms is None else ms_to_dt(c.last_seen_ms) for c in cs],
    )


class DeviceStore(PoolStore):
    """The API's reads for provenance and owners. Nothing here writes."""

    async def packet(self, device_id: bytes, seq: int) -> PacketRow | None:
        """A stored packet, its envelope and its readings (in index order), or None."""
        async with self.pool.acquire() as conn:
            p = await conn.fetchrow(
                """SELECT kind, payload_digest, n_readings, received_at, first_ts, envelope
                   FROM packets WHERE device_id = $1 AND seq = $2""",
                device_id,
                seq,
            )
            if p is None:
                return None
            rows: list[Any] = []
            if p["first_ts"] is not None:
                # From the first reading on, the device's readings in time order; the packet's are the
                # first n_readings with its seq. Readings are at most DEPIN_MAX_FUTURE_MS past their
                # receipt, so the scan ends a day after it even if some were deleted (retention).
                rows = await conn.fetch(
                    f"""SELECT {_READING_SELECT} FROM readings
                        WHERE hashbyteaextended(device_id, 0) = hashbyteaextended($1::bytea, 0)
                          AND device_id = $1 AND seq = $2
                          AND ts >= $3 AND ts <= $4::timestamptz + interval '1 day'
                        ORDER BY ts, idx LIMIT $5""",
                    device_id,
                    seq,
                    p["first_ts"],
                    p["received_at"],
                    p["n_readings"],
                )
        readings = sorted(
            (
                ReadingRow._make((dt_to_ms(ts), bytes(dev), *mid, bytes_or_none(sha), uri, flags))
                for ts, dev, *mid, sha, uri, flags in rows
            ),
            key=lambda r: r.idx,
        )
        return PacketRow(
            device_id,
            seq,
            p["kind"],
            bytes(p["payload_digest"]),
            dt_to_ms(p["received_at"]),
            bytes_or_none(p["envelope"]),
            readings,
        )

    async def device(self, device_id: bytes, epochs: int) -> DeviceView | None:
        """The device's registry row and its newest `epochs` epochs of counts; None if neither exists."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"{_DEVICE_SELECT} WHERE d.device_id = $1", device_id)
            counts = await conn.fetch(_COUNTS.format(device="$1"), device_id, epochs)
            last_seen = await conn.fetchval(
                "SELECT max(last_seen) FROM device_epoch_counts WHERE device_id = $1", device_id
            )
        if row is None and not counts:
            return None
        return _view(device_id, row, counts, last_seen)

    async def owner_devices(
        self, owner: str, *, after: bytes | None, limit: int, epochs: int
    ) -> list[DeviceView]:
        """An owner's devices (checksummed address, as the mirror holds it) in device-id order after
        `after`, at most `limit`, each with its newest `epochs` epochs of counts."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"{_DEVICE_SELECT} WHERE d.owner = $1 AND d.device_id > $2 ORDER BY d.device_id LIMIT $3",
                owner,
                after or b"",
                limit,
            )
            ids = [bytes(r["device_id"]) for r in rows]
            counts = await conn.fetch(
                f"""SELECT i.device_id, c.* FROM unnest($1::bytea[]) AS i(device_id)
                    CROSS JOIN LATERAL ({_COUNTS.format(device="i.device_id")}) c""",
                ids,
                epochs,
            )
            seen = await conn.fetch(
                """SELECT i.device_id, (SELECT max(last_seen) FROM device_epoch_counts c
                                        WHERE c.device_id = i.device_id) AS last_seen
                   FROM unnest($1::bytea[]) AS i(device_id)""",
                ids,
            )
        by_device: dict[bytes, list[Any]] = {}
        for c in counts:
            by_device.setdefault(bytes(c["device_id"]), []).append(c)
        last = {bytes(s["device_id"]): s["last_seen"] for s in seen}
        return [_view(i, r, by_device.get(i, []), last.get(i)) for i, r in zip(ids, rows, strict=True)]


def _view(device_id: bytes, row: Any, counts: list[Any], last_seen: Any) -> DeviceView:
    epochs = [
        EpochCounts(c["epoch"], c["packets"], c["readings"], c["flagged"], c["rejected"]) for c in counts
    ]
    seen = None if last_seen is None else dt_to_ms(last_seen)
    if row is None:
        return DeviceView(device_id, False, None, None, None, None, None, None, seen, epochs)
    return DeviceView(
        device_id,
        True,
        row["owner"],
        row["hw_class"],
        row["kind"],
        row["asserted_cell"] or None,
        row["active"],
        row["registered_block"],
        seen,
        epochs,
    )
