"""The consumer's part of the store: a judged batch written in one transaction, and rejection retention.

Write path (`write_batch`): COPY packets into a staging table, one `INSERT … ON CONFLICT DO NOTHING`
into `packets` (the (device, seq) source of truth), record the first use of each media hash in `media`
(media reuse), COPY the readings of the packets that were new, record rejections keyed by message
digest. One transaction per batch, so the consumer acknowledges the MQTT messages only after
everything they produced is committed; re-running a batch is a no-op. Each batch holds the epoch-seal
lock shared, so a new packet for an epoch already closed is refused (`epoch_closed`) in the batch's
own transaction, with no race against the closer (`EpochStore.seal_epoch`). What each packet then is
(stored, duplicate, replay, epoch closed) is decided by `ingest.core.storage_rules` from what the SQL
returned.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from devices.protocol.model import Reason
from ingest.adapters.store.devices import add_device_counts
from ingest.adapters.store.records import as_rejection, reading_records, sealed_detail, text
from ingest.adapters.store.rollups import mark_dirty
from ingest.adapters.store.rows import DAY_MS, SEAL_LOCK_KEY, PoolStore, clamped_dt, ms_to_dt
from ingest.core import state as device_state
from ingest.core.device_counts import count_rejected, count_stored
from ingest.core.h3cells import RES_SHIFT
from ingest.core.media import MediaUse, first_uses
from ingest.core.metering import epoch_sql
from ingest.core.rollup_rules import batch_hours
from ingest.core.rules import FLAG_MEDIA_REUSE
from ingest.core.storage_rules import INT64_MAX, Outcome, packet_outcome, split_batch
from ingest.model import AcceptedPacket, BatchResult, RejectedMessage

if TYPE_CHECKING:
    from ingest.pipeline import Pending, Sorted

log = logging.getLogger(__name__)


# Temp tables live as long as the pooled connection; ON COMMIT DELETE ROWS empties them per batch,
# which avoids creating and dropping catalog entries on every batch.
_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS _stage_packets (
    device_id bytea, seq bigint, payload_digest bytea, kind text, n_readings int,
    received_at timestamptz, first_ts timestamptz, envelope bytea) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _stage_media (
    media_sha256 bytea, device_id bytea, ts timestamptz, seq bigint, idx smallint, reused boolean)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _stage_rejections (
    message_digest bytea, device_id bytea, seq bigint, reason text, detail text, topic text,
    received_at timestamptz) ON COMMIT DELETE ROWS;
"""
# Appended to the staging DDL, which runs first in every batch transaction: the shared lock costs a
# statement but no extra round trip. The watermark must be read by a LATER statement (the packets
# INSERT): a statement's snapshot is taken before it waits for a lock.
_BATCH_PRELUDE = _STAGING_DDL + f"SELECT pg_advisory_xact_lock_shared({SEAL_LOCK_KEY});\n"
_PACKET_COLUMNS = ["device_id", "seq", "payload_digest", "kind", "n_readings", "received_at", "first_ts"]
_PACKET_COLUMNS += ["envelope"]  # the signed message as received (migration 010: provenance)
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


async def ensure_partitions(conn: asyncpg.Connection, min_ts: datetime, max_ts: datetime) -> list[str]:
    """Create the daily `readings` partitions covering [min_ts, max_ts] (native mode); returns new names.

    Race-safe between workers (advisory lock + re-check inside the SQL function). Call it outside the
    batch transaction: creating a partition takes a strong lock on `readings`, and doing that while
    holding row locks from an open batch is how two workers deadlock.
    """
    rows = await conn.fetch("SELECT depin_ensure_readings_partitions($1, $2) AS name", min_ts, max_ts)
    return [r["name"] for r in rows]


class IngestStore(PoolStore):
    """The consumer's writes: `write_batch` (and the daily partitions it needs), `prune_rejections`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        partition_days_back: int = 7,
        partition_days_ahead: int = 1,
        clock: Callable[[], float] = time.time,
        epoch_genesis_ms: int = 1_767_225_600_000,
        epoch_length_ms: int = 86_400_000,
    ) -> None:
        """`partition_days_back/ahead`: daily partitions are created on demand only for days in this
        window around now; readings outside it (rare: the pipeline rejects them) go to the DEFAULT
        partition instead of creating a partition per arbitrary date. `epoch_genesis_ms/length_ms`:
        the epochs (DEPIN_EPOCH_*) the per-device counts are kept by (`device_epoch_counts`)."""
        super().__init__(pool)
        self._days_back = partition_days_back
        self._days_ahead = partition_days_ahead
        self._clock = clock
        self._native: bool | None = None  # None until probed: native partitions vs hypertable
        self._known_days: set[int] = set()  # days (ms // DAY_MS) whose partition is known to exist
        self._shard = random.randrange(64)  # its row in stats_counters (migrations/008_api_counters.sql)
        self._epochs = (epoch_genesis_ms, epoch_length_ms)
        self._resolutions: set[int] = set()  # H3 resolutions known to be in readings_resolutions

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
        self,
        accepted: Sequence[AcceptedPacket],
        rejected: Sequence[RejectedMessage],
        pending: Pending | None = None,
    ) -> BatchResult:
        """Store a batch in one transaction. Idempotent: a re-run stores nothing and reports duplicates.

        Per packet: new → stored with its readings; same (device, seq) already stored with the same
        payload digest → duplicate (counted only, the message's outcome stays 'accepted'); with a
        different digest → replay (also recorded in `rejections`, keyed by the packet's message digest);
        new but its first reading before the seal watermark (its epoch is closed, see
        `EpochStore.seal_epoch`) → not stored, rejection `epoch_closed`. Within the batch the first
        occurrence of a (device, seq) wins (the rules: `ingest.core.storage_rules`).
        `BatchResult.rejections` counts rejection rows newly written (a re-run writes 0). A packet the
        schema cannot hold (timestamp past year 9999, seq ≥ 2^63: the pipeline's limits should stop
        these) becomes a `malformed` rejection rather than failing the batch forever.
        Raises ValueError if cells/readings differ in length (a caller bug).

        `pending`: verified messages still to be judged by the stateful rules (`Pending.finish`), in
        this transaction, against their devices' `device_state` rows, locked first and in device order
        and written back before the commit (docs/DESIGN.md §2); what it accepts and rejects joins
        `accepted` and `rejected`, and stays in `pending.result` for the caller.
        """
        # Readings are in time order (the decoder rejects others), so a packet's first and last reading
        # bound its days; a stray reading would still land in the default partition, never fail.
        spans = [p.readings for p in accepted]
        if pending is not None:
            spans += [p.readings for p in pending.packets]
        await self._ensure_days(
            day
            for readings in spans
            if readings
            for day in range(readings[0].ts_ms // DAY_MS, readings[-1].ts_ms // DAY_MS + 1)
        )

        inserted: set[tuple[bytes, int]] = set()
        other_digest: dict[tuple[bytes, int], bytes] = {}  # key → another payload's digest, stored
        sealed: dict[tuple[bytes, int], str] = {}  # key → rejection detail
        reused: set[bytes] = set()
        n_readings = 0
        new_res: set[int] = set()
        hours: list[int] = []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_BATCH_PRELUDE)
            state_lock_s = None
            if pending is not None and pending.items:
                judged, state_lock_s = await self._judge_with_state(conn, pending)
                accepted = [*accepted, *judged.accepted]
                rejected = [*rejected, *judged.rejected]
            batch = split_batch(accepted)  # raises ValueError on a caller bug
            first = batch.first
            extra_rejections: list[RejectedMessage] = []
            for p, problem in batch.unstorable:
                log.warning("packet %s/%s cannot be stored: %s", p.device_id.hex(), p.seq, problem)
                extra_rejections.append(as_rejection(p, Reason.MALFORMED, f"cannot be stored: {problem}"))
            if first:
                await conn.copy_records_to_table(
                    "_stage_packets",
                    columns=_PACKET_COLUMNS,
                    records=[
                        (
                            p.device_id,
                            p.seq,
                            p.payload_digest,
                            text(p.kind),
                            len(p.readings),
                            clamped_dt(p.received_ms),
                            ms_to_dt(min(r.ts_ms for r in p.readings)) if p.readings else None,
                            p.envelope or None,  # the signed message as received (provenance)
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
                        sealed[key] = sealed_detail(r["first_ts"], r["sealed_until"], r["sealed_epoch"])
                    else:
                        other_digest[key] = bytes(r["payload_digest"])

                new_packets = [first[key] for key in sorted(inserted)]
                reused = await self._record_media(conn, new_packets)
                readings = [rec for p in new_packets for rec in reading_records(p, reused)]
                if readings:
                    await conn.copy_records_to_table("readings", columns=_READING_COLUMNS, records=readings)
                    new_res = {cell >> RES_SHIFT & 15 for p in new_packets for cell in p.cells}
                    new_res -= self._resolutions
                    if new_res:  # the place queries scan only the resolutions listed there (migration 013)
                        await conn.execute(
                            "INSERT INTO readings_resolutions SELECT unnest($1::smallint[])"
                            " ON CONFLICT DO NOTHING",
                            sorted(new_res),
                        )
                n_readings = len(readings)
                hours = batch_hours(p.readings for p in new_packets)

            duplicates: list[tuple[bytes, int]] = []
            replays: list[AcceptedPacket] = []
            closed: list[AcceptedPacket] = []
            # Each key's first copy not inserted here, then the batch's later copies. The inserted ones
            # are STORED and skipped without a call: this loop must not allocate per packet (a tuple
            # per packet here cost ~10 % of write_batch in garbage-collector passes).
            for p in itertools.chain((p for key, p in first.items() if key not in inserted), batch.repeats):
                key = (p.device_id, p.seq)
                # What is stored under the key now: nothing if the seal refused it (every copy is then
                # refused), another payload's digest, or else the digest of the key's first copy.
                stored = None if key in sealed else other_digest.get(key, first[key].payload_digest)
                outcome = packet_outcome(p.payload_digest, stored)
                if outcome is Outcome.DUPLICATE:
                    duplicates.append(key)
                elif outcome is Outcome.REPLAY:
                    replays.append(p)
                elif outcome is Outcome.EPOCH_CLOSED:
                    closed.append(p)

            to_reject = list(rejected) + extra_rejections
            to_reject += [
                as_rejection(p, Reason.REPLAY, f"seq {p.seq} is already stored with another payload")
                for p in replays
            ]
            to_reject += [as_rejection(p, Reason.EPOCH_CLOSED, sealed[(p.device_id, p.seq)]) for p in closed]
            by_reason, by_device = await self._insert_rejections(conn, to_reject, self._epochs)
            n_rejections = sum(by_reason.values())
            if inserted or by_device:
                counts = count_stored((first[k] for k in sorted(inserted)), reused, *self._epochs)
                await add_device_counts(conn, self._shard, count_rejected(by_device, counts))
            # The hours whose rollups these readings change (migration 014). Late in the batch: every
            # batch writing the current hour locks its row, until the commit.
            await mark_dirty(conn, hours, self._shard)
            # Last statement of the batch: the counters row locks are held only until the commit.
            await self._count_stored(conn, len(inserted), n_readings, by_reason)

        if new_res:  # committed: not asked again by this process
            self._resolutions |= new_res
        return BatchResult(
            stored=len(inserted),
            readings=n_readings,
            duplicates=duplicates,
            replays=[(p.device_id, p.seq) for p in replays],
            epoch_closed=[(p.device_id, p.seq) for p in closed],
            rejections=n_rejections,
            reused_media=sorted(reused),
            state_lock_s=state_lock_s,
        )

    @staticmethod
    async def _judge_with_state(conn: asyncpg.Connection, pending: Pending) -> tuple[Sorted, float]:
        """Lock the state rows of the batch's devices (created empty if new), in device order, judge
        the stateful rules against them and write them back. The lock holds until the commit, so every
        worker judges a device's packets one batch after another, each against the state the last one
        committed: exact whatever the number of workers. Taken before any other row lock of the batch,
        in one order, so two workers wait on each other instead of deadlocking. Also returns how long
        the lock took (waiting for other workers' batches holding some of the rows)."""
        devices = pending.devices
        started = time.perf_counter()
        rows = await conn.fetch(
            """INSERT INTO device_state (device_id) SELECT d FROM unnest($1::bytea[]) AS d ORDER BY d
               ON CONFLICT (device_id) DO UPDATE SET device_id = EXCLUDED.device_id
               RETURNING device_id, state""",
            devices,
        )
        locked_s = time.perf_counter() - started
        states = {bytes(r["device_id"]): device_state.decode(r["state"]) for r in rows}
        judged = pending.finish(states)
        await conn.execute(
            """UPDATE device_state s SET state = u.state, touched_at = now()
               FROM unnest($1::bytea[], $2::bytea[]) AS u(device_id, state)
               WHERE s.device_id = u.device_id""",
            devices,
            [device_state.encode(states[d]) for d in devices],
        )
        return judged, locked_s

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
                    WHERE hashbyteaextended(r.device_id, 0) = hashbyteaextended(f.device_id, 0)
                      AND r.device_id = f.device_id AND r.ts = f.ts AND r.seq = f.seq AND r.idx = f.idx
                      AND r.flags & {FLAG_MEDIA_REUSE} = 0""",
                [r["device_id"] for r in rows],
                [r["ts"] for r in rows],
                [r["seq"] for r in rows],
                [r["idx"] for r in rows],
            )
        return reused

    @staticmethod
    async def _insert_rejections(
        conn: asyncpg.Connection, rejections: Sequence[RejectedMessage], epochs: tuple[int, int]
    ) -> tuple[dict[str, int], list[tuple[bytes | None, int, int]]]:
        """Insert the rejections not recorded yet; returns how many were new, by reason, and by
        (device, epoch of receipt) as (device_id, epoch, n) for the per-device counts."""
        if not rejections:
            return {}, []
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
                    text(r.detail),
                    text(r.topic),
                    clamped_dt(r.received_ms),
                )
            )
        await conn.copy_records_to_table("_stage_rejections", columns=_REJECTION_COLUMNS, records=records)
        rows = await conn.fetch(
            f"""WITH ins AS (
                    INSERT INTO rejections ({", ".join(_REJECTION_COLUMNS)})
                    SELECT {", ".join(_REJECTION_COLUMNS)} FROM _stage_rejections
                    ORDER BY message_digest
                    ON CONFLICT (message_digest) DO NOTHING
                    RETURNING reason, device_id, received_at)
                SELECT reason, ins.device_id, {epoch_sql("received_at", *epochs)} AS epoch, count(*) AS n,
                       d.device_id IS NOT NULL AS registered
                FROM ins LEFT JOIN devices d ON d.device_id = ins.device_id GROUP BY 1, 2, 3, 5"""
        )
        by_reason: dict[str, int] = {}
        for r in rows:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + r["n"]
        # Only registered devices' rejections are counted per device: anyone can publish on any topic,
        # and random ids must not grow `device_epoch_counts`.
        return by_reason, [(bytes(r["device_id"]), r["epoch"], r["n"]) for r in rows if r["registered"]]

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
        expired = await self._delete_in_batches(
            """DELETE FROM rejections WHERE id IN (
                   SELECT id FROM rejections WHERE received_at < $1 LIMIT $2)""",
            clamped_dt(before_ms),
            batch=batch,
        )
        trimmed = await self._delete_in_batches(
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
            batch=batch,
        )
        return expired, trimmed

    async def prune_device_state(self, idle_before_ms: int, batch: int = 10_000) -> int:
        """Delete the `device_state` rows last written before `idle_before_ms` (devices silent since), in
        statements of at most `batch` rows. The outer `touched_at` test is rechecked on a row a batch
        wrote meanwhile (the subquery's choice is not), so a device that just spoke keeps its state.
        Returns how many were deleted."""
        return await self._delete_in_batches(
            """DELETE FROM device_state WHERE touched_at < $1 AND device_id IN (
                   SELECT device_id FROM device_state WHERE touched_at < $1 LIMIT $2)""",
            clamped_dt(idle_before_ms),
            batch=batch,
        )

    async def _delete_in_batches(self, sql: str, *args: Any, batch: int) -> int:
        """Run a DELETE whose last parameter is its row limit until it deletes fewer than `batch` rows;
        returns how many it deleted."""
        deleted = 0
        while True:
            status = await self.pool.execute(sql, *args, batch)
            n = int(status.rsplit(" ", 1)[1])
            deleted += n
            if n < batch:
                return deleted
