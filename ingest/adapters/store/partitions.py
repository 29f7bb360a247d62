"""Upkeep of the `readings` partitions, run by the consume part's retention task (ingest/retention.py):
create the coming days' partitions before a batch needs them, rebuild the indexes of days that are
over packed (`compact_partition`), and drop whole old partitions.

Native mode (migrations/002_readings.native.sql): a day's partition is `readings_pYYYYMMDD`; dropping
one is a DROP TABLE (no DELETE, no vacuum debt). TimescaleDB mode (002_readings.timescale.sql): chunks
are created by TimescaleDB itself, and the old ones go with `drop_chunks`. Which days may go is decided
by `ingest.core.partition_rules` (retention AND the sealed watermark).
"""

from __future__ import annotations

import re
from datetime import date

from ingest.adapters.store.ingest import ensure_partitions
from ingest.adapters.store.rollups import dirty_before, forget_day
from ingest.adapters.store.rows import DAY_MS, PoolStore, ms_to_dt

# Same key as depin_ensure_readings_partitions(): creating and dropping never interleave.
_PARTITIONS_LOCK = "SELECT pg_advisory_xact_lock(hashtext('depin.readings.partitions'))"
# DROP TABLE of a partition locks `readings` exclusively; while it waits, batches queue behind it, so
# it gives up soon and the next pass tries again.
_DROP_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '2s'"
_COMPACT_LOCK = "hashtext('depin.readings.compact')"  # one rebuild at a time, across workers
_DAY_NAME = re.compile(r"^readings_p(\d{4})(\d{2})(\d{2})$")
_EPOCH_DAY = date(1970, 1, 1).toordinal()


class PartitionStore(PoolStore):
    """The partition upkeep's statements (on the consume part's pool)."""

    _native: bool | None = None  # probed once: native partitions vs TimescaleDB hypertable

    async def native(self) -> bool:
        if self._native is None:
            self._native = bool(
                await self.pool.fetchval(
                    "SELECT to_regprocedure('depin_ensure_readings_partitions(timestamptz,timestamptz)')"
                    " IS NOT NULL"
                )
            )
        return self._native

    async def create_days(self, first_day: int, last_day: int) -> list[str]:
        """Create the native daily partitions of days [first_day, last_day]; returns the new names."""
        async with self.pool.acquire() as conn:
            return await ensure_partitions(conn, ms_to_dt(first_day * DAY_MS), ms_to_dt(last_day * DAY_MS))

    async def partition_days(self) -> dict[int, str]:
        """The native daily partitions of `readings`: day number → name (the DEFAULT one is not a day)."""
        rows = await self.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'readings'::regclass"
        )
        days: dict[int, str] = {}
        for r in rows:
            m = _DAY_NAME.match(r["relname"])
            if m:
                days[date(*map(int, m.groups())).toordinal() - _EPOCH_DAY] = r["relname"]
        return days

    async def sealed_until_ms(self) -> int | None:
        """The sealed watermark (migration 005) in ms, or None while it is still '-infinity'."""
        v = await self.pool.fetchval(
            "SELECT CASE WHEN isfinite(sealed_until)"
            " THEN (extract(epoch FROM sealed_until) * 1000)::bigint END FROM epoch_seal"
        )
        return None if v is None else int(v)

    async def drop_partition(self, name: str) -> bool:
        """DROP one native partition (False if another worker already did)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_PARTITIONS_LOCK)
            await conn.execute(_DROP_LOCK_TIMEOUT)
            if await conn.fetchval("SELECT to_regclass($1) IS NULL", name):
                return False
            await conn.execute(f'DROP TABLE "{name}"')  # the name matched _DAY_NAME: no quoting issue
            await conn.execute("DELETE FROM readings_compactions WHERE partition = $1", name)
            m = _DAY_NAME.match(name)
            if m:  # its rollup rows go in the same transaction: a query never sees one without the other
                await forget_day(conn, (date(*map(int, m.groups())).toordinal() - _EPOCH_DAY) * DAY_MS)
            return True

    async def compacted(self) -> set[str]:
        """The partitions whose indexes were rebuilt packed (`compact_partition`)."""
        return {r["partition"] for r in await self.pool.fetch("SELECT partition FROM readings_compactions")}

    async def compact_partition(self, name: str) -> bool:
        """Rebuild one native partition's indexes (REINDEX … CONCURRENTLY: reads and late writes go on
        meanwhile) and record it; False if another worker holds the rebuild or already did this one."""
        async with self.pool.acquire() as conn:
            if not await conn.fetchval(f"SELECT pg_try_advisory_lock({_COMPACT_LOCK})"):
                return False
            try:
                done = await conn.fetchval(
                    "SELECT to_regclass($1) IS NULL"
                    " OR EXISTS (SELECT 1 FROM readings_compactions WHERE partition = $1)",
                    name,
                )
                if done:
                    return False
                await conn.execute("SET statement_timeout = 0")  # a day of readings takes a while
                await conn.execute(f'REINDEX TABLE CONCURRENTLY "{name}"')  # name matched _DAY_NAME
                await conn.execute(
                    "INSERT INTO readings_compactions (partition) VALUES ($1) ON CONFLICT DO NOTHING", name
                )
                return True
            finally:
                await conn.execute(f"RESET statement_timeout; SELECT pg_advisory_unlock({_COMPACT_LOCK})")

    async def drop_chunks_before(self, before_ms: int) -> list[str]:
        """TimescaleDB: drop the `readings` chunks wholly before `before_ms`; returns their names."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_DROP_LOCK_TIMEOUT)
            rows = await conn.fetch(
                "SELECT drop_chunks('readings', older_than => $1::timestamptz) AS name", ms_to_dt(before_ms)
            )
            if rows:  # the hours before the cut are recomputed from what is left (rollups: untested here)
                await dirty_before(conn, before_ms)
        return [str(r["name"]) for r in rows]
