"""The store: every write and query of the service against PostgreSQL, on one asyncpg pool.

Write path (`write_batch`): COPY packets into a staging table, one `INSERT … ON CONFLICT DO NOTHING`
into `packets` (the (device, seq) source of truth), record the first use of each media hash in `media`
(media reuse), COPY the readings of the packets that were new, record rejections keyed by message
digest. One transaction per batch, so the consumer acknowledges the MQTT messages only after
everything they produced is committed; re-running a batch is a no-op. Each batch holds the epoch-seal
lock shared, so a new packet for an epoch already closed is refused (`epoch_closed`) in the batch's
own transaction, with no race against the closer (`seal_epoch`).

Conventions of the values returned to the API: times as epoch milliseconds, device ids and message
digests as plain hex, chain values (roots, tx hashes, raw txs) as 0x-hex, H3 cells as the usual H3
hex string, token amounts as Python ints.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from devices.protocol.model import DeviceRecord, Reason
from devices.protocol.registry_fold import HwClassInfo
from ingest.core.media import MediaUse, first_uses
from ingest.core.rules import FLAG_MEDIA_REUSE
from ingest.model import AcceptedPacket, BatchResult, CoverageRow, RejectedMessage

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
DAY_MS = 86_400_000
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last instant a Python datetime holds
INT64_MAX = 2**63 - 1
_F32_MAX = 3.4028234663852886e38

# Temp tables live as long as the pooled connection; ON COMMIT DELETE ROWS empties them per batch,
# which avoids creating and dropping catalog entries on every batch.
_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS _stage_packets (
    device_id bytea, seq bigint, payload_digest bytea, kind text, n_readings int,
    received_at timestamptz, first_ts timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _stage_media (
    media_sha256 bytea, device_id bytea, ts timestamptz, seq bigint, idx smallint, reused boolean)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _stage_rejections (
    message_digest bytea, device_id bytea, seq bigint, reason text, detail text, topic text,
    received_at timestamptz) ON COMMIT DELETE ROWS;
"""
# Advisory-lock key of the epoch seal ("depin_se"): every batch holds it SHARED for its transaction,
# sealing an epoch takes it EXCLUSIVE, so a seal waits for the batches in flight and the batches after
# it see the new watermark (ingest/adapters/migrations/005_epoch_seal.sql).
SEAL_LOCK_KEY = 0x6465_7069_6E5F_7365
# Appended to the staging DDL, which runs first in every batch transaction: the shared lock costs a
# statement but no extra round trip. The watermark must be read by a LATER statement (the packets
# INSERT): a statement's snapshot is taken before it waits for a lock.
_BATCH_PRELUDE = _STAGING_DDL + f"SELECT pg_advisory_xact_lock_shared({SEAL_LOCK_KEY});\n"
# Advisory-lock key ("depin_sc") held by the epoch scheduler while it decides and acts, so two processes
# running the `epochs` part never close or sign a publish for the same epoch at once.
SCHEDULER_LOCK_KEY = 0x6465_7069_6E5F_7363
_PACKET_COLUMNS = ["device_id", "seq", "payload_digest", "kind", "n_readings", "received_at", "first_ts"]
_REJECTION_COLUMNS = ["message_digest", "device_id", "seq", "reason", "detail", "topic", "received_at"]
_READING_COLUMNS = [
    "ts",
    "device_id",
    "seq",
    "idx",
    "lat",
    "lon",
    "acc",
    "alt",
    "cell",
    "kind",
    "vals",
    "media_sha256",
    "media_uri",
    "flags",
]
_READING_SELECT = (
    "ts, device_id, seq, idx, lat, lon, acc, alt, cell, kind, vals, media_sha256, media_uri, flags"
)


def ms_to_dt(ms: int) -> datetime:
    if not 0 <= ms <= MAX_TS_MS:
        raise ValueError(f"timestamp {ms} ms is outside 1970..9999")
    return _EPOCH + timedelta(0, 0, ms * 1000)  # positional microseconds: ~30 % faster than milliseconds=


def _clamped_dt(ms: int) -> datetime:
    return ms_to_dt(min(max(ms, 0), MAX_TS_MS))


def dt_to_ms(dt: datetime) -> int:
    return (dt - _EPOCH) // _MS


def cell_to_db(cell: int) -> int:
    """H3 index → bigint. Identity: H3's top bit is reserved 0, so every index is in [0, 2^63)."""
    if not 0 <= cell <= INT64_MAX:
        raise ValueError(f"not an H3 index: {cell}")
    return cell


def cell_str(cell: int) -> str:
    return format(cell, "x")  # h3.int_to_str spelling, without importing h3 here


def _hex0x(b: bytes | None) -> str | None:
    return None if b is None else "0x" + bytes(b).hex()


def _text(s: str) -> str:
    # PostgreSQL text cannot hold U+0000; one NUL in a detail or uri must not fail a whole batch.
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


def _unstorable(p: AcceptedPacket) -> str | None:
    """Why this packet cannot be represented in the schema (the pipeline's limits should prevent it)."""
    if not 0 <= p.seq <= INT64_MAX:
        return f"seq {p.seq} outside 0..2^63-1"
    if len(p.readings) > 32767:
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


async def ensure_partitions(conn: asyncpg.Connection, min_ts: datetime, max_ts: datetime) -> list[str]:
    """Create the daily `readings` partitions covering [min_ts, max_ts] (native mode); returns new names.

    Race-safe between workers (advisory lock + re-check inside the SQL function). Call it outside the
    batch transaction: creating a partition takes a strong lock on `readings`, and doing that while
    holding row locks from an open batch is how two workers deadlock.
    """
    rows = await conn.fetch("SELECT depin_ensure_readings_partitions($1, $2) AS name", min_ts, max_ts)
    return [r["name"] for r in rows]


async def _upsert_devices(conn: Any, records: Sequence[DeviceRecord], block: int) -> None:
    latest = {r.device_id: r for r in records}
    if not latest:
        return
    rows = list(latest.values())
    ids = [r.device_id for r in rows]
    await conn.execute(
        """INSERT INTO devices (device_id, pubkey, owner, hw_class, asserted_cell, active,
                                registered_block, updated_block)
           SELECT d, k, o, h, c, a, rb, $8
           FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::int[], $5::bigint[], $6::bool[],
                       $7::bigint[]) AS u(d, k, o, h, c, a, rb)
           ON CONFLICT (device_id) DO UPDATE SET
               pubkey = excluded.pubkey, owner = excluded.owner, hw_class = excluded.hw_class,
               asserted_cell = excluded.asserted_cell, active = excluded.active,
               registered_block = CASE WHEN excluded.registered_block > 0
                                       THEN excluded.registered_block
                                       ELSE devices.registered_block END,
               updated_block = excluded.updated_block""",
        ids,
        [r.pubkey for r in rows],
        [r.owner for r in rows],
        [r.hw_class for r in rows],
        [cell_to_db(r.asserted_cell) for r in rows],
        [r.active for r in rows],
        [r.registered_block for r in rows],
        block,
    )
    # A record without its registration block (0): the first block we saw it in stands in.
    await conn.execute(
        "UPDATE devices SET registered_block = $2 WHERE device_id = ANY($1) AND registered_block = 0",
        ids,
        block,
    )


async def _set_cursor(conn: Any, name: str, block: int, block_hash: bytes) -> None:
    await conn.execute(
        """INSERT INTO chain_cursor (name, block_number, block_hash, updated_at)
           VALUES ($1, $2, $3, now())
           ON CONFLICT (name) DO UPDATE SET block_number = excluded.block_number,
               block_hash = excluded.block_hash, updated_at = excluded.updated_at""",
        name,
        block,
        block_hash,
    )


class Store:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        partition_days_back: int = 7,
        partition_days_ahead: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`partition_days_back/ahead`: daily partitions are created on demand only for days in this
        window around now; readings outside it (rare: the pipeline rejects them) go to the DEFAULT
        partition instead of creating a partition per arbitrary date."""
        self.pool = pool
        self._days_back = partition_days_back
        self._days_ahead = partition_days_ahead
        self._clock = clock
        self._native: bool | None = None  # None until probed: native partitions vs hypertable
        self._known_days: set[int] = set()  # days (ms // DAY_MS) whose partition is known to exist
        self._shard = random.randrange(64)  # this writer's row in stats_counters (see 008_api_counters)

    # --- write path -------------------------------------------------------------------------------

    async def _ensure_days(self, days: Iterable[int]) -> None:
        today = int(self._clock() * 1000) // DAY_MS
        wanted = {d for d in days if today - self._days_back <= d <= today + self._days_ahead}
        missing = wanted - self._known_days
        if not missing:
            return
        async with self.pool.acquire() as conn:
            if self._native is None:
                self._native = await conn.fetchval(
                    "SELECT to_regprocedure('depin_ensure_readings_partitions(timestamptz,timestamptz)')"
                    " IS NOT NULL"
                )
            if self._native:
                lo, hi = min(missing), max(missing)
                created = await ensure_partitions(conn, ms_to_dt(lo * DAY_MS), ms_to_dt(hi * DAY_MS))
                if created:
                    log.info("created readings partitions %s", ", ".join(created))
                self._known_days.update(range(lo, hi + 1))
            else:
                self._known_days.update(missing)  # TimescaleDB creates chunks itself

    async def write_batch(
        self, accepted: Sequence[AcceptedPacket], rejected: Sequence[RejectedMessage]
    ) -> BatchResult:
        """Store a batch in one transaction. Idempotent: a re-run stores nothing and reports duplicates.

        Per packet: new → stored with its readings; same (device, seq) already stored with the same
        payload digest → duplicate (counted only, the message's outcome stays 'accepted'); with a
        different digest → replay (also recorded in `rejections`, keyed by the packet's message digest);
        new but its first reading before the seal watermark (its epoch is closed, see `seal_epoch`) →
        not stored, rejection `epoch_closed`. Within the batch the first occurrence of a (device, seq)
        wins. `BatchResult.rejections` counts rejection rows newly written (a re-run writes 0). A
        packet the schema cannot hold (timestamp past year 9999, seq ≥ 2^63: the pipeline's limits
        should stop these) becomes a `malformed` rejection rather than failing the batch forever.
        Raises ValueError if cells/readings differ in length (a caller bug).
        """
        first: dict[tuple[bytes, int], AcceptedPacket] = {}
        repeats: list[AcceptedPacket] = []
        extra_rejections: list[RejectedMessage] = []
        for p in accepted:
            if len(p.cells) != len(p.readings):
                raise ValueError(f"packet {p.device_id.hex()}/{p.seq}: one cell per reading expected")
            key = (p.device_id, p.seq)
            if key in first:
                repeats.append(p)
            elif (problem := _unstorable(p)) is not None:
                log.warning("packet %s/%s cannot be stored: %s", p.device_id.hex(), p.seq, problem)
                extra_rejections.append(_as_rejection(p, Reason.MALFORMED, f"cannot be stored: {problem}"))
            else:
                first[key] = p

        # Readings are in time order (the decoder rejects others), so a packet's first and last reading
        # bound its days; a stray reading would still land in the default partition, never fail.
        await self._ensure_days(
            day
            for p in first.values()
            if p.readings
            for day in range(p.readings[0].ts_ms // DAY_MS, p.readings[-1].ts_ms // DAY_MS + 1)
        )

        inserted: set[tuple[bytes, int]] = set()
        stored_digest: dict[tuple[bytes, int], bytes] = {}
        sealed: dict[tuple[bytes, int], str] = {}  # key → rejection detail
        reused: set[bytes] = set()
        n_readings = 0
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_BATCH_PRELUDE)
            if first:
                await conn.copy_records_to_table(
                    "_stage_packets",
                    columns=_PACKET_COLUMNS,
                    records=[
                        (
                            p.device_id,
                            p.seq,
                            p.payload_digest,
                            _text(p.kind),
                            len(p.readings),
                            _clamped_dt(p.received_ms),
                            ms_to_dt(min(r.ts_ms for r in p.readings)) if p.readings else None,
                        )
                        for p in first.values()
                    ],
                )
                # Key order: two workers inserting overlapping keys then wait on each other in the same
                # order instead of deadlocking (a redelivery can reach another worker mid-batch).
                # A packet whose first reading is before the seal watermark is not inserted (its epoch
                # is closed); the shared seal lock, taken above, keeps the watermark fixed until commit.
                rows = await conn.fetch(
                    f"""INSERT INTO packets ({", ".join(_PACKET_COLUMNS)})
                        SELECT {", ".join(_PACKET_COLUMNS)} FROM _stage_packets
                        WHERE first_ts IS NULL OR first_ts >= coalesce(
                            (SELECT sealed_until FROM epoch_seal), '-infinity')
                        ORDER BY device_id, seq
                        ON CONFLICT (device_id, seq) DO NOTHING
                        RETURNING device_id, seq"""
                )
                inserted = {(bytes(r["device_id"]), r["seq"]) for r in rows}
                # Packets stored with another digest (replays), and packets neither inserted nor stored
                # (refused by the seal). A fresh statement sees rows committed meanwhile by other workers
                # (READ COMMITTED).
                rows = await conn.fetch(
                    """SELECT s.device_id, s.seq, p.payload_digest, s.first_ts, w.sealed_until, w.sealed_epoch
                       FROM _stage_packets s LEFT JOIN packets p USING (device_id, seq)
                       LEFT JOIN epoch_seal w ON true
                       WHERE p.payload_digest IS DISTINCT FROM s.payload_digest"""
                )
                for r in rows:
                    key = (bytes(r["device_id"]), r["seq"])
                    if r["payload_digest"] is None:
                        sealed[key] = _sealed_detail(r["first_ts"], r["sealed_until"], r["sealed_epoch"])
                    else:
                        stored_digest[key] = bytes(r["payload_digest"])

                new_packets = [first[key] for key in sorted(inserted)]
                reused = await self._record_media(conn, new_packets)
                readings = [rec for p in new_packets for rec in _reading_records(p, reused)]
                if readings:
                    await conn.copy_records_to_table("readings", columns=_READING_COLUMNS, records=readings)
                n_readings = len(readings)

            duplicates: list[tuple[bytes, int]] = []
            replays: list[AcceptedPacket] = []
            closed: list[AcceptedPacket] = []
            for key, p in first.items():
                if key in inserted:
                    continue
                if key in sealed:
                    closed.append(p)
                elif key in stored_digest:
                    replays.append(p)
                else:
                    duplicates.append(key)
            for p in repeats:
                key = (p.device_id, p.seq)
                if key in sealed:
                    closed.append(p)  # nothing is stored under this key: every copy is refused
                elif stored_digest.get(key, first[key].payload_digest) == p.payload_digest:
                    duplicates.append(key)
                else:
                    replays.append(p)

            to_reject = list(rejected) + extra_rejections
            to_reject += [
                _as_rejection(p, Reason.REPLAY, f"seq {p.seq} is already stored with another payload")
                for p in replays
            ]
            to_reject += [_as_rejection(p, Reason.EPOCH_CLOSED, sealed[(p.device_id, p.seq)]) for p in closed]
            by_reason = await self._insert_rejections(conn, to_reject)
            n_rejections = sum(by_reason.values())
            # Last statement of the batch: the counters row locks are held only until the commit.
            await self._count_stored(conn, len(inserted), n_readings, by_reason)

        return BatchResult(
            stored=len(inserted),
            readings=n_readings,
            duplicates=duplicates,
            replays=[(p.device_id, p.seq) for p in replays],
            epoch_closed=[(p.device_id, p.seq) for p in closed],
            rejections=n_rejections,
            reused_media=sorted(reused),
        )

    @staticmethod
    async def _record_media(conn: asyncpg.Connection, packets: Sequence[AcceptedPacket]) -> set[bytes]:
        """Record the first use of each media hash of these (new) packets; return the hashes now known
        to come from more than one device, and flag the stored first use of each (an earlier batch's
        reading). The caller flags this batch's readings of those hashes before writing them.

        Rows are inserted in hash order, so two workers meeting the same hashes lock them in the same
        order; the lock on a `media` row also serialises the UPDATE of its first reading."""
        firsts, reused = first_uses(
            MediaUse(r.media.sha256, p.device_id, r.ts_ms, p.seq, i)
            for p in packets
            for i, r in enumerate(p.readings)
            if r.media is not None
        )
        if not firsts:
            return reused
        await conn.copy_records_to_table(
            "_stage_media",
            columns=["media_sha256", "device_id", "ts", "seq", "idx", "reused"],
            records=[
                (u.sha256, u.device_id, ms_to_dt(u.ts_ms), u.seq, u.idx, u.sha256 in reused) for u in firsts
            ],
        )
        # A new hash is inserted. A hash already known from another device, or already known reused, is
        # marked reused and its first use returned; the first device sending its own hash again before
        # anyone copied it is not reuse, and returns nothing.
        rows = await conn.fetch(
            """WITH up AS (
                   INSERT INTO media (media_sha256, device_id, ts, seq, idx, reused)
                   SELECT media_sha256, device_id, ts, seq, idx, reused FROM _stage_media
                   ORDER BY media_sha256
                   ON CONFLICT (media_sha256) DO UPDATE SET reused = true
                   WHERE media.device_id <> EXCLUDED.device_id OR media.reused
                   RETURNING media_sha256, device_id, ts, seq, idx, reused)
               SELECT * FROM up WHERE reused"""
        )
        if rows:
            reused.update(bytes(r["media_sha256"]) for r in rows)
            await conn.execute(
                f"""UPDATE readings r SET flags = r.flags | {FLAG_MEDIA_REUSE}
                    FROM unnest($1::bytea[], $2::timestamptz[], $3::bigint[], $4::smallint[])
                         AS f(device_id, ts, seq, idx)
                    WHERE r.device_id = f.device_id AND r.ts = f.ts AND r.seq = f.seq AND r.idx = f.idx
                      AND r.flags & {FLAG_MEDIA_REUSE} = 0""",
                [r["device_id"] for r in rows],
                [r["ts"] for r in rows],
                [r["seq"] for r in rows],
                [r["idx"] for r in rows],
            )
        return reused

    @staticmethod
    async def _insert_rejections(
        conn: asyncpg.Connection, rejections: Sequence[RejectedMessage]
    ) -> dict[str, int]:
        """Insert the rejections not recorded yet; returns how many were new, by reason."""
        if not rejections:
            return {}
        seen: set[bytes] = set()
        records = []
        for r in rejections:
            if r.message_digest in seen:
                continue
            seen.add(r.message_digest)
            seq = r.seq if r.seq is not None and 0 <= r.seq <= INT64_MAX else None
            records.append(
                (
                    r.message_digest,
                    r.device_id,
                    seq,
                    str(r.reason),
                    _text(r.detail),
                    _text(r.topic),
                    _clamped_dt(r.received_ms),
                )
            )
        await conn.copy_records_to_table("_stage_rejections", columns=_REJECTION_COLUMNS, records=records)
        rows = await conn.fetch(
            f"""WITH ins AS (
                    INSERT INTO rejections ({", ".join(_REJECTION_COLUMNS)})
                    SELECT {", ".join(_REJECTION_COLUMNS)} FROM _stage_rejections
                    ORDER BY message_digest
                    ON CONFLICT (message_digest) DO NOTHING
                    RETURNING reason)
                SELECT reason, count(*) AS n FROM ins GROUP BY reason"""
        )
        return {r["reason"]: r["n"] for r in rows}

    async def _count_stored(
        self, conn: asyncpg.Connection, packets: int, readings: int, rejections: dict[str, int]
    ) -> None:
        """Add what this batch stored to `stats_counters` (one UPSERT; names sorted, so two writers on
        one shard lock its rows in the same order)."""
        counts = {"packets": packets, "readings": readings}
        counts.update({f"rejections:{reason}": n for reason, n in rejections.items()})
        names = sorted(k for k, v in counts.items() if v)
        if not names:
            return
        await conn.execute(
            """INSERT INTO stats_counters (name, shard, n)
               SELECT name, $2, n FROM unnest($1::text[], $3::bigint[]) AS u(name, n)
               ON CONFLICT (name, shard) DO UPDATE SET n = stats_counters.n + excluded.n""",
            names,
            self._shard,
            [counts[k] for k in names],
        )

    async def prune_rejections(
        self,
        before_ms: int,
        unsigned: Sequence[str],
        unsigned_keep_per_device: int,
        batch: int = 10_000,
    ) -> tuple[int, int]:
        """Delete rejection rows received before `before_ms` (retention), then the unsigned ones
        (`unsigned` reasons) of each device beyond its newest `unsigned_keep_per_device`, so nobody's
        garbage hides a device's own signed rejections. In statements of at most `batch` rows (short
        locks, nothing held between them). Returns (expired, trimmed)."""
        expired = trimmed = 0
        cutoff = _clamped_dt(before_ms)
        while True:
            status = await self.pool.execute(
                """DELETE FROM rejections WHERE id IN (
                       SELECT id FROM rejections WHERE received_at < $1 LIMIT $2)""",
                cutoff,
                batch,
            )
            n = int(status.rsplit(" ", 1)[1])
            expired += n
            if n < batch:
                break
        while True:
            status = await self.pool.execute(
                """WITH heavy AS (
                       SELECT device_id FROM rejections
                       WHERE device_id IS NOT NULL AND reason = ANY($1::text[])
                       GROUP BY device_id HAVING count(*) > $2)
                   DELETE FROM rejections WHERE id IN (
                       SELECT x.id FROM heavy h CROSS JOIN LATERAL (
                           SELECT id FROM rejections r
                           WHERE r.device_id = h.device_id AND r.reason = ANY($1::text[])
                           ORDER BY received_at DESC, id DESC OFFSET $2) x
                       LIMIT $3)""",
                list(unsigned),
                unsigned_keep_per_device,
                batch,
            )
            n = int(status.rsplit(" ", 1)[1])
            trimmed += n
            if n < batch:
                break
        return expired, trimmed

    # --- registry mirror --------------------------------------------------------------------------

    async def upsert_devices(self, records: Sequence[DeviceRecord], block: int) -> None:
        """Insert or update mirror rows as of `block` (the last record of a device id wins)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await _upsert_devices(conn, records, block)

    async def save_mirror(
        self,
        cursor: str,
        block: int,
        block_hash: bytes,
        upserts: Sequence[DeviceRecord] = (),
        deletes: Sequence[bytes] = (),
        classes: Sequence[HwClassInfo] = (),
        class_deletes: Sequence[int] = (),
    ) -> None:
        """Mirror rows (devices and hardware classes) and the checkpoint that covers them in ONE
        transaction: after a crash or a failed write the rows are never ahead of (or behind) the
        (block, hash) a restart resumes from."""
        async with self.pool.acquire() as conn, conn.transaction():
            if deletes:
                await conn.execute("DELETE FROM devices WHERE device_id = ANY($1)", list(deletes))
            await _upsert_devices(conn, upserts, block)
            if class_deletes:
                await conn.execute("DELETE FROM hw_classes WHERE id = ANY($1)", list(class_deletes))
            if classes:
                await conn.executemany(
                    """INSERT INTO hw_classes (id, name, max_speed_kmh, h3_res, enabled, updated_block)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                           max_speed_kmh = excluded.max_speed_kmh, h3_res = excluded.h3_res,
                           enabled = excluded.enabled, updated_block = excluded.updated_block""",
                    [(c.id, c.name, c.max_speed_kmh, c.h3_res, c.enabled, block) for c in classes],
                )
            await _set_cursor(conn, cursor, block, block_hash)

    async def load_hw_classes(self) -> list[HwClassInfo]:
        rows = await self.pool.fetch(
            "SELECT id, name, max_speed_kmh, h3_res, enabled FROM hw_classes ORDER BY id"
        )
        return [HwClassInfo(r["id"], r["name"], r["max_speed_kmh"], r["h3_res"], r["enabled"]) for r in rows]

    async def load_devices(self) -> list[DeviceRecord]:
        rows = await self.pool.fetch(
            "SELECT device_id, pubkey, owner, hw_class, asserted_cell, active, registered_block "
            "FROM devices ORDER BY device_id"
        )
        return [
            DeviceRecord(
                device_id=bytes(r["device_id"]),
                pubkey=bytes(r["pubkey"]),
                owner=r["owner"],
                hw_class=r["hw_class"],
                asserted_cell=r["asserted_cell"],
                active=r["active"],
                registered_block=r["registered_block"],
            )
            for r in rows
        ]

    async def get_cursor(self, name: str) -> tuple[int, bytes] | None:
        row = await self.pool.fetchrow(
            "SELECT block_number, block_hash FROM chain_cursor WHERE name = $1", name
        )
        return None if row is None else (row["block_number"], bytes(row["block_hash"]))

    async def set_cursor(self, name: str, block: int, block_hash: bytes) -> None:
        await _set_cursor(self.pool, name, block, block_hash)

    # --- API queries ------------------------------------------------------------------------------

    async def readings(
        self,
        *,
        device_id: bytes | None = None,
        cell: int | None = None,
        start_ms: int,
        end_ms: int,
        limit: int = 1000,
        after: tuple[int, bytes, int, int] | None = None,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Readings with start_ms <= ts < end_ms, ordered by (ts, device_id, seq, idx).

        Returns {"items": [...], "next": cursor | None}; pass `next` back as `after` for the following
        page (it is the (ts_ms, device_id, seq, idx) of the last item, None when the page was short).
        `max_bytes` also ends the page once its rows' estimated JSON size (vals, media uri and a fixed
        300 bytes per row) passes that many bytes — decided in SQL over at most `limit` rows, so a
        page of large readings is cut short (at least one row, `next` set) instead of being built in
        memory whole.
        """
        if limit <= 0:
            raise ValueError("limit must be positive")
        args: list[Any] = [_clamped_dt(start_ms), _clamped_dt(end_ms)]
        conds = ["ts >= $1", "ts < $2"]
        if device_id is not None:
            args.append(device_id)
            conds.append(f"device_id = ${len(args)}")
        if cell is not None:
            args.append(cell_to_db(cell))
            conds.append(f"cell = ${len(args)}")
        if after is not None:
            a_ts, a_dev, a_seq, a_idx = after
            n = len(args)
            args += [ms_to_dt(a_ts), a_dev, a_seq, a_idx]
            # The redundant `ts >= …` lets the planner use it as an index bound; the row comparison is
            # the exact keyset condition.
            conds.append(f"ts >= ${n + 1}")
            conds.append(f"(ts, device_id, seq, idx) > (${n + 1}, ${n + 2}, ${n + 3}, ${n + 4})")
        args.append(limit)
        page = (
            f"SELECT {_READING_SELECT} FROM readings WHERE {' AND '.join(conds)} "
            f"ORDER BY ts, device_id, seq, idx LIMIT ${len(args)}"
        )
        if max_bytes is None:
            rows = await self.pool.fetch(page, *args)
            cut = False
        else:
            args.append(max_bytes)
            rows = await self.pool.fetch(
                f"""SELECT * FROM (
                        SELECT *, count(*) OVER () AS _n, row_number() OVER w AS _i,
                               sum(300 + coalesce(octet_length(vals::text), 0)
                                   + coalesce(octet_length(media_uri), 0)) OVER w AS _upto
                        FROM ({page}) p
                        WINDOW w AS (ORDER BY ts, device_id, seq, idx ROWS UNBOUNDED PRECEDING)) q
                    WHERE _upto <= ${len(args)} OR _i = 1
                    ORDER BY ts, device_id, seq, idx""",
                *args,
            )
            cut = bool(rows) and len(rows) < rows[0]["_n"]
        items = [_reading_dict(r) for r in rows]
        nxt = None
        if rows and (len(rows) == limit or cut):
            last = rows[-1]
            nxt = (dt_to_ms(last["ts"]), bytes(last["device_id"]), last["seq"], last["idx"])
        return {"items": items, "next": nxt}

    async def recent_rejections(
        self, device_id: bytes | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first; `device_id=None` lists all devices. `detail` and `topic` are cut at 1,000 and
        300 characters (a topic may be 64 KiB), so a page of 1,000 stays about 1.5 MB at most."""
        sql = (
            "SELECT id, message_digest, device_id, seq, reason, left(detail, 1000) AS detail, "
            "left(topic, 300) AS topic, received_at FROM rejections"
        )
        args: list[Any] = []
        if device_id is not None:
            sql += " WHERE device_id = $1"
            args.append(device_id)
        args.append(limit)
        sql += f" ORDER BY received_at DESC, id DESC LIMIT ${len(args)}"
        return [
            {
                "id": r["id"],
                "message_digest": bytes(r["message_digest"]).hex(),
                "device_id": None if r["device_id"] is None else bytes(r["device_id"]).hex(),
                "seq": r["seq"],
                "reason": r["reason"],
                "detail": r["detail"],
                "topic": r["topic"],
                "received_ms": dt_to_ms(r["received_at"]),
            }
            for r in await self.pool.fetch(sql, *args)
        ]

    async def stats(self) -> dict[str, Any]:
        """Totals from the maintained counters (`stats_counters`, added to by every batch in its own
        transaction): a read of a few dozen rows, never a table scan. Cumulative since the database was
        created: rows removed later (retention) stay counted."""
        rows = await self.pool.fetch("SELECT name, sum(n)::bigint AS n FROM stats_counters GROUP BY name")
        totals = {r["name"]: r["n"] for r in rows}
        return {
            "packets": totals.get("packets", 0),
            "readings": totals.get("readings", 0),
            "rejections": {
                name.removeprefix("rejections:"): n
                for name, n in sorted(totals.items())
                if name.startswith("rejections:")
            },
        }

    async def counts(self) -> dict[str, Any]:
        """Exact counts by full scans, for the demo summary and tests. The API serves `stats()`."""
        async with self.pool.acquire() as conn:
            packets = await conn.fetchval("SELECT count(*) FROM packets")
            readings = await conn.fetchval("SELECT count(*) FROM readings")
            by_reason = await conn.fetch("SELECT reason, count(*) AS n FROM rejections GROUP BY reason")
        return {
            "packets": packets,
            "readings": readings,
            "rejections": {r["reason"]: r["n"] for r in by_reason},
        }

    # --- epochs -----------------------------------------------------------------------------------

    async def epoch_coverage(self, start_ms: int, end_ms: int) -> list[CoverageRow]:
        """Per (device, cell): clean readings and flagged readings with start_ms <= ts < end_ms.

        Joined with the registry mirror as it is now (owner at close time); devices missing from the
        mirror are left out. Ordered by (device_id, cell) so the result is deterministic.
        """
        rows = await self.pool.fetch(
            """SELECT c.device_id, d.owner, d.hw_class, c.cell, c.readings, c.flagged, d.registered_block
               FROM (SELECT device_id, cell,
                            count(*) FILTER (WHERE flags = 0)  AS readings,
                            count(*) FILTER (WHERE flags <> 0) AS flagged
                     FROM readings
                     WHERE ts >= $1 AND ts < $2
                     GROUP BY device_id, cell) c
               JOIN devices d USING (device_id)
               ORDER BY c.device_id, c.cell""",
            ms_to_dt(start_ms),
            ms_to_dt(end_ms),
        )
        return [
            CoverageRow(
                device_id=bytes(r["device_id"]),
                owner=r["owner"],
                hw_class=r["hw_class"],
                cell=r["cell"],
                readings=r["readings"],
                flagged=r["flagged"],
                registered_block=r["registered_block"],
            )
            for r in rows
        ]

    async def save_epoch_result(
        self,
        epoch: int,
        start_ms: int,
        end_ms: int,
        emission: int,
        allocated: int,
        unissued: int,
        root: bytes,
        inputs_digest: bytes,
        manifest: dict[str, Any],
        device_rewards: Sequence[tuple[bytes, str, int, int, int]],
        owner_rewards: Sequence[tuple[str, int, int, list[str]]],
    ) -> dict[str, Any]:
        """Record a closed epoch and its rewards in one transaction; status 'closed'.

        `device_rewards`: (device_id, owner, cell, readings, amount); `owner_rewards`: (owner, amount,
        cumulative, proof as 0x-hex list). Idempotent: if the epoch is already stored, nothing is
        changed and the stored row is returned (compare it with what you computed).
        """
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                new = await conn.fetchval(
                    """INSERT INTO epochs (epoch, start_at, end_at, status, emission, allocated, unissued,
                                           root, inputs_digest, manifest)
                       VALUES ($1, $2, $3, 'closed', $4, $5, $6, $7, $8, $9)
                       ON CONFLICT (epoch) DO NOTHING
                       RETURNING epoch""",
                    epoch,
                    ms_to_dt(start_ms),
                    ms_to_dt(end_ms),
                    emission,
                    allocated,
                    unissued,
                    root,
                    inputs_digest,
                    manifest,
                )
                if new is not None:
                    if device_rewards:
                        await conn.copy_records_to_table(
                            "device_rewards",
                            columns=["epoch", "device_id", "owner", "cell", "readings", "amount"],
                            records=[(epoch, d, o, cell_to_db(c), n, a) for d, o, c, n, a in device_rewards],
                        )
                    if owner_rewards:
                        await conn.copy_records_to_table(
                            "owner_rewards",
                            columns=["epoch", "owner", "amount", "cumulative", "proof"],
                            records=[(epoch, o, a, cum, list(p)) for o, a, cum, p in owner_rewards],
                        )
                else:
                    log.info("epoch %s already stored; keeping the stored result", epoch)
            row = await conn.fetchrow("SELECT * FROM epochs WHERE epoch = $1", epoch)
        assert row is not None
        return _epoch_dict(row)

    async def get_epoch(self, epoch: int) -> dict[str, Any] | None:
        row = await self.pool.fetchrow("SELECT * FROM epochs WHERE epoch = $1", epoch)
        return None if row is None else _epoch_dict(row)

    async def epoch_rewards(self, epoch: int) -> dict[str, list[dict[str, Any]]]:
        """Every device and owner amount of an epoch, read back from `device_rewards` and `owner_rewards`."""
        async with self.pool.acquire() as conn:
            devices = await conn.fetch(
                "SELECT device_id, owner, cell, readings, amount FROM device_rewards WHERE epoch = $1 "
                "ORDER BY device_id, cell",
                epoch,
            )
            owners = await conn.fetch(
                "SELECT owner, amount, cumulative, proof FROM owner_rewards WHERE epoch = $1 ORDER BY owner",
                epoch,
            )
        return {
            "devices": [
                {
                    "device_id": bytes(r["device_id"]).hex(),
                    "owner": r["owner"],
                    "cell": cell_str(r["cell"]),
                    "readings": r["readings"],
                    "amount": int(r["amount"]),
                }
                for r in devices
            ],
            "owners": [
                {
                    "owner": r["owner"],
                    "amount": int(r["amount"]),
                    "cumulative": int(r["cumulative"]),
                    "proof": r["proof"],
                }
                for r in owners
            ],
        }

    async def last_epoch(self) -> int | None:
        value: int | None = await self.pool.fetchval("SELECT max(epoch) FROM epochs")
        return value

    async def epoch_progress(self) -> tuple[int | None, int | None]:
        """(highest stored epoch, lowest epoch stored as 'closed': not yet published nor settled)."""
        row = await self.pool.fetchrow(
            """SELECT max(epoch) AS last, min(epoch) FILTER (WHERE status = 'closed') AS unpublished
               FROM epochs"""
        )
        assert row is not None
        return row["last"], row["unpublished"]

    async def earliest_reading_ms(self) -> int | None:
        """The earliest stored reading's timestamp. A scan (no btree on ts): the scheduler asks only
        while no epoch is stored."""
        value = await self.pool.fetchval("SELECT min(ts) FROM readings")
        return None if value is None else dt_to_ms(value)

    @asynccontextmanager
    async def scheduler_turn(self) -> AsyncIterator[bool]:
        """Yields True while this caller holds the scheduler lock (session-level, one pooled connection
        kept for the turn), False if another scheduler holds it now (do nothing, look again later)."""
        async with self.pool.acquire() as conn:
            held = await conn.fetchval("SELECT pg_try_advisory_lock($1)", SCHEDULER_LOCK_KEY)
            try:
                yield bool(held)
            finally:
                if held:
                    await conn.execute("SELECT pg_advisory_unlock($1)", SCHEDULER_LOCK_KEY)

    async def seal_epoch(self, epoch: int, until_ms: int) -> tuple[int, int]:
        """Refuse new packets whose first reading is before `until_ms` (the end of `epoch`) from now on.

        Takes the seal lock EXCLUSIVE: waits for the batches in flight (each holds it shared) to
        commit, and batches that start later see the new watermark. Monotone (a lower value changes
        nothing) and idempotent. Returns the (sealed_until ms, sealed_epoch) in force afterwards.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEAL_LOCK_KEY)
            row = await conn.fetchrow(
                """UPDATE epoch_seal SET sealed_until = greatest(sealed_until, $1),
                       sealed_epoch = greatest(sealed_epoch, $2),
                       sealed_at = CASE WHEN $1 > sealed_until THEN now() ELSE sealed_at END
                   RETURNING sealed_until, sealed_epoch""",
                ms_to_dt(until_ms),
                epoch,
            )
        assert row is not None, "epoch_seal has lost its row"
        return dt_to_ms(row["sealed_until"]), row["sealed_epoch"]

    async def sealed_until(self) -> tuple[int | None, int]:
        """(watermark ms or None if nothing is sealed, highest sealed epoch)."""
        row = await self.pool.fetchrow("SELECT sealed_until, sealed_epoch FROM epoch_seal")
        if row is None or row["sealed_epoch"] == 0:  # still '-infinity' (asyncpg: a naive datetime.min)
            return None, 0
        return dt_to_ms(row["sealed_until"]), row["sealed_epoch"]

    async def cumulative_by_owner(self, before_epoch: int) -> dict[str, int]:
        """Each owner's latest cumulative total from epochs < before_epoch (the base for the next tree)."""
        rows = await self.pool.fetch(
            """SELECT DISTINCT ON (owner) owner, cumulative FROM owner_rewards
               WHERE epoch < $1 ORDER BY owner, epoch DESC""",
            before_epoch,
        )
        return {r["owner"]: int(r["cumulative"]) for r in rows}

    async def owner_reward(self, epoch: int, owner: str) -> dict[str, Any] | None:
        """An owner's amount, cumulative total and claim proof; the address matches case-insensitively."""
        row = await self.pool.fetchrow(
            """SELECT epoch, owner, amount, cumulative, proof FROM owner_rewards
               WHERE epoch = $1 AND lower(owner) = lower($2)""",
            epoch,
            owner,
        )
        if row is None:
            return None
        return {
            "epoch": row["epoch"],
            "owner": row["owner"],
            "amount": int(row["amount"]),
            "cumulative": int(row["cumulative"]),
            "proof": row["proof"],
        }

    async def journal_tx(self, epoch: int, raw_tx: bytes, tx_hash: bytes, nonce: int) -> bool:
        """Store the signed publish tx before broadcasting it. False if the epoch is missing or settled."""
        status = await self.pool.execute(
            """UPDATE epochs SET raw_tx = $2, tx_hash = $3, tx_nonce = $4
               WHERE epoch = $1 AND status <> 'settled'""",
            epoch,
            raw_tx,
            tx_hash,
            nonce,
        )
        return status == "UPDATE 1"

    async def clear_journal(self, epoch: int, tx_hash: bytes) -> bool:
        """Forget a journaled publish tx that was mined and reverted, so a new one is signed."""
        status = await self.pool.execute(
            """UPDATE epochs SET raw_tx = NULL, tx_hash = NULL, tx_nonce = NULL
               WHERE epoch = $1 AND tx_hash = $2 AND status = 'closed'""",
            epoch,
            tx_hash,
        )
        return status == "UPDATE 1"

    async def mark_published(self, epoch: int, tx_hash: bytes, block: int) -> bool:
        """Receipt seen in `block`. Callable again after a reorg moved the tx; False once settled."""
        status = await self.pool.execute(
            """UPDATE epochs SET status = 'published', tx_hash = $2, block_number = $3,
                   published_at = coalesce(published_at, now())
               WHERE epoch = $1 AND status <> 'settled'""",
            epoch,
            tx_hash,
            block,
        )
        return status == "UPDATE 1"

    async def settle_without_tx(self, epoch: int) -> bool:
        """An epoch that commits to nothing (nobody has ever earned) is final without a transaction."""
        status = await self.pool.execute(
            "UPDATE epochs SET status = 'settled' WHERE epoch = $1 AND status = 'closed' AND raw_tx IS NULL",
            epoch,
        )
        return status == "UPDATE 1"

    async def mark_settled(self, epoch: int) -> bool:
        """Final past the confirmation depth. Only a published epoch settles; True also if already settled."""
        status = await self.pool.execute(
            "UPDATE epochs SET status = 'settled' WHERE epoch = $1 AND status IN ('published', 'settled')",
            epoch,
        )
        return status == "UPDATE 1"


# --- row conversions ------------------------------------------------------------------------------


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sealed_detail(first_ts: datetime | None, sealed_until: datetime | None, sealed_epoch: int | None) -> str:
    first = "?" if first_ts is None else _iso(first_ts)
    until = "?" if sealed_until is None else _iso(sealed_until)
    return f"first reading {first} is in a closed epoch (epochs ≤ {sealed_epoch} sealed until {until})"


def _as_rejection(p: AcceptedPacket, reason: Reason, detail: str) -> RejectedMessage:
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


def _reading_records(
    p: AcceptedPacket, reused_media: set[bytes] | frozenset[bytes] = frozenset()
) -> list[tuple[Any, ...]]:
    # Once per stored reading: locals hoisted, timestamps built inline (_unstorable checked their range),
    # acc/alt are `real`: asyncpg refuses out-of-range floats, which would fail the whole batch, so they
    # become NULL (the comparison is false for NaN and ±inf too).
    kind = _text(p.kind)
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
                None if media is None else _text(media.uri),
                (flags[i] if i < n_flags else 0)
                | (FLAG_MEDIA_REUSE if media is not None and media.sha256 in reused_media else 0),
            )
        )
    return out


def _reading_dict(r: asyncpg.Record) -> dict[str, Any]:
    sha = r["media_sha256"]
    return {
        "ts": dt_to_ms(r["ts"]),
        "device_id": bytes(r["device_id"]).hex(),
        "seq": r["seq"],
        "idx": r["idx"],
        "lat": r["lat"],
        "lon": r["lon"],
        "acc": r["acc"],
        "alt": r["alt"],
        "cell": cell_str(r["cell"]),
        "kind": r["kind"],
        "vals": r["vals"],
        "media": None if sha is None else {"sha256": bytes(sha).hex(), "uri": r["media_uri"]},
        "flags": r["flags"],
    }


def _epoch_dict(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "epoch": r["epoch"],
        "start_ms": dt_to_ms(r["start_at"]),
        "end_ms": dt_to_ms(r["end_at"]),
        "status": r["status"],
        "emission": int(r["emission"]),
        "allocated": int(r["allocated"]),
        "unissued": int(r["unissued"]),
        "root": _hex0x(r["root"]),
        "inputs_digest": _hex0x(r["inputs_digest"]),
        "manifest": r["manifest"],
        "tx_hash": _hex0x(r["tx_hash"]),
        "raw_tx": _hex0x(r["raw_tx"]),
        "tx_nonce": r["tx_nonce"],
        "block_number": r["block_number"],
        "closed_ms": dt_to_ms(r["closed_at"]),
        "published_ms": None if r["published_at"] is None else dt_to_ms(r["published_at"]),
    }
