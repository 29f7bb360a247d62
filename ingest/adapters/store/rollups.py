"""Hourly rollups per res-7 block (migration 014; rules in ingest/core/rollup_rules.py): the batch's
invalidation, the refresh of one dirty hour, and the aggregate and usage queries answered from them.

A query reads `readings_hourly` for its clean hours and the readings themselves for its dirty hours, in
one statement: one snapshot, in which every clean hour's rows equal its readings (a batch dirties its
hours in its own transaction; a refresh cleans an hour in the transaction that rewrote it, and only if
no batch dirtied it again meanwhile). So the answer is always the raw path's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ingest.adapters.store.rows import PoolStore, clamped_dt, dt_to_ms, ms_to_dt
from ingest.core import h3cells, metering
from ingest.core.readfilter import ReadingFilter
from ingest.core.rollup_rules import COUNT_NAME, HOUR_MS, block_ranges

# Refreshers of any process take turns ("depin_ro"); batches never take it.
REFRESH_LOCK_KEY = 0x6465_7069_6E5F_726F
_BUCKETS = {"hour": "1 hour", "day": "1 day"}

# A batch's hours in its writer's shard: a new dirty row, or its version bumped. Sorted: batches lock
# shared rows in one order.
MARK_DIRTY_SQL = """INSERT INTO readings_hourly_dirty (hour, shard)
                    SELECT h, $2 FROM unnest($1::timestamptz[]) AS u(h) ORDER BY h
                    ON CONFLICT (hour, shard) DO UPDATE SET version = readings_hourly_dirty.version + 1"""

# One hour's rows from one scan of its readings: each reading's numeric values (jsonb number → text →
# float8, as the raw path's `->>` cast) and one COUNT_NAME row per reading, counting it for metering.
_RECOMPUTE_SQL = f"""INSERT INTO readings_hourly (block, hour, kind, name, n, lo, hi, total)
    SELECT depin_cell7(r.cell), $1, r.kind, e.key, count(*), min(e.v), max(e.v), sum(e.v)
    FROM readings r CROSS JOIN LATERAL (
        SELECT key, (value #>> '{{}}')::float8 AS v FROM jsonb_each(r.vals)
        WHERE jsonb_typeof(value) = 'number' AND key <> '{COUNT_NAME}'
        UNION ALL SELECT '{COUNT_NAME}', NULL) e
    WHERE r.ts >= $1 AND r.ts < $1 + interval '1 hour'
    GROUP BY 1, 3, 4"""


def _parts_sql(values: bool) -> str:
    """(block, hour, n, lo, hi, total) per block and hour of the filter: the rollup rows of clean hours,
    and the readings of dirty hours grouped the same way. $1/$2 the range (whole hours), $3/$4 block
    ranges, $5 the value name (COUNT_NAME with `values` False: every reading counted), $6 kind or NULL.
    Each block range is its own LATERAL (`OFFSET 0`: one index range scan each, as in queries.py)."""
    if values:
        pick = "(vals ->> $5)::float8 AS v"
        numeric = "AND jsonb_typeof(vals -> $5) = 'number'"
    else:
        pick, numeric = "NULL::float8 AS v", ""
    return f"""WITH dirty AS MATERIALIZED (
                   SELECT DISTINCT hour FROM readings_hourly_dirty WHERE hour >= $1 AND hour < $2),
               g AS MATERIALIZED (SELECT * FROM unnest($3::bigint[], $4::bigint[]) AS g(lo, hi)),
               parts AS (
                   SELECT h.block, h.hour, h.n, h.lo, h.hi, h.total
                   FROM g CROSS JOIN LATERAL (
                       SELECT block, hour, n, lo, hi, total FROM readings_hourly
                       WHERE block BETWEEN g.lo AND g.hi AND hour >= $1 AND hour < $2 AND name = $5
                         AND ($6::text IS NULL OR kind = $6) OFFSET 0) h
                   WHERE NOT EXISTS (SELECT 1 FROM dirty d WHERE d.hour = h.hour)
                   UNION ALL
                   SELECT r.block, d.hour, count(*), min(r.v), max(r.v), sum(r.v)
                   FROM dirty d CROSS JOIN g CROSS JOIN LATERAL (
                       SELECT depin_cell7(cell) AS block, {pick} FROM readings
                       WHERE depin_cell7(cell) BETWEEN g.lo AND g.hi
                         AND ts >= d.hour AND ts < d.hour + interval '1 hour' {numeric}
                         AND ($6::text IS NULL OR kind = $6) OFFSET 0) r
                   GROUP BY r.block, d.hour)"""


def _args(f: ReadingFilter, name: str) -> list[Any]:
    ranges = block_ranges(f.cell)
    return [
        clamped_dt(f.start_ms),
        clamped_dt(f.end_ms),
        [lo for lo, _ in ranges],
        [hi for _, hi in ranges],
        name,
        f.kind,
    ]


def aggregate_sql(res: int | None, bucket: str) -> str:
    """The rollup path of `QueryStore.aggregates`: its columns, grouping and order; $7 the row limit."""
    cell = "NULL::bigint"
    if res is not None:
        at_res = f"((block >> {h3cells.RES_SHIFT}) & 15) >= {res}"
        cell = f"(CASE WHEN {at_res} THEN {h3cells.parent_sql('block', res)} ELSE block END)"
    return f"""{_parts_sql(values=True)}
               SELECT {cell} AS cell, NULL::bytea AS device_id,
                      date_bin('{_BUCKETS[bucket]}', hour, '1970-01-01T00:00:00Z') AS t,
                      sum(n)::bigint AS n, min(lo) AS lo, max(hi) AS hi,
                      sum(total) / sum(n)::float8 AS mean
               FROM parts GROUP BY 1, 2, 3 ORDER BY 3, 1, 2 LIMIT $7"""


async def aggregates(
    db: asyncpg.Pool | asyncpg.Connection,
    f: ReadingFilter,
    *,
    res: int | None,
    bucket: str,
    value: str,
    max_rows: int,
) -> list[tuple[int | None, None, int, int, float, float, float]]:
    """`QueryStore.aggregates` for an eligible filter (`rollup_rules.aggregate_eligible`), as the
    fields of its AggregateRow: (cell, device_id, bucket_ms, n, min, max, avg)."""
    rows = await db.fetch(aggregate_sql(res, bucket), *_args(f, value), max_rows + 1)
    return [(r["cell"], None, dt_to_ms(r["t"]), r["n"], r["lo"], r["hi"], r["mean"]) for r in rows]


async def usage(
    db: asyncpg.Pool | asyncpg.Connection, f: ReadingFilter, genesis_ms: int, length_ms: int
) -> dict[tuple[int, int], int]:
    """`QueryStore.usage` for an eligible filter (`rollup_rules.usage_eligible`): readings per (res-7
    metering cell = block, epoch), counted from the COUNT_NAME rows."""
    rows = await db.fetch(
        f"""{_parts_sql(values=False)}
            SELECT block AS c, {metering.epoch_sql("hour", genesis_ms, length_ms)} AS e,
                   sum(n)::bigint AS n
            FROM parts GROUP BY 1, 2""",
        *_args(f, COUNT_NAME),
    )
    return {(r["c"], r["e"]): r["n"] for r in rows}


async def mark_dirty(conn: asyncpg.Connection, hours_ms: Sequence[int], shard: int = 0) -> None:
    """In a batch's transaction: its hours are dirty in `shard` (a new row, or the version bumped)."""
    if hours_ms:
        await conn.execute(MARK_DIRTY_SQL, [ms_to_dt(h) for h in hours_ms], shard)


class RollupStore(PoolStore):
    """The refresher's statements (the epochs part's pool) and the retention's."""

    async def dirty(self) -> list[tuple[int, int]]:
        """Every dirty hour: (hour_ms, the sum of its shards' versions)."""
        rows = await self.pool.fetch(
            "SELECT hour, sum(version)::bigint AS version FROM readings_hourly_dirty GROUP BY hour"
        )
        return [(dt_to_ms(r["hour"]), r["version"]) for r in rows]

    async def refresh(self, hour_ms: int) -> bool:
        """Recompute one hour's rows from its readings, in one transaction; the hour is clean afterwards
        unless a batch dirtied it again meanwhile (its version moved: the row stays for the next pass).
        Returns whether it was cleaned. Refreshers take turns on an advisory lock; one that finds the
        hour already clean does nothing."""
        hour = ms_to_dt(hour_ms)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", REFRESH_LOCK_KEY)
            # Read after the lock (a fresh snapshot): every batch that committed before this read is in
            # the recompute below; one committing later changes the version.
            marks = await conn.fetch("SELECT shard, version FROM readings_hourly_dirty WHERE hour = $1", hour)
            if not marks:
                return False
            await conn.execute("DELETE FROM readings_hourly WHERE hour = $1", hour)
            await conn.execute(_RECOMPUTE_SQL, hour)
            status = await conn.execute(
                """DELETE FROM readings_hourly_dirty d USING unnest($2::smallint[], $3::bigint[]) AS m(s, v)
                   WHERE d.hour = $1 AND d.shard = m.s AND d.version = m.v""",
                hour,
                [m["shard"] for m in marks],
                [m["version"] for m in marks],
            )
            # Clean when every mark read went; a mark added or bumped meanwhile keeps the hour dirty.
            return status == f"DELETE {len(marks)}" and not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM readings_hourly_dirty WHERE hour = $1)", hour
            )

    async def lag_s(self, now_ms: int) -> float:
        """How long the longest-waiting ended dirty hour has waited since it ended or was dirtied."""
        lag = await self.pool.fetchval(
            """SELECT max(extract(epoch FROM $1::timestamptz - greatest(since, hour + interval '1 hour')))
               FROM readings_hourly_dirty WHERE hour + interval '1 hour' <= $1::timestamptz""",
            ms_to_dt(now_ms),
        )
        return max(0.0, float(lag or 0.0))


async def forget_day(conn: asyncpg.Connection, day_start_ms: int) -> None:
    """In the transaction that dropped a day's readings partition: that day's rollup rows go too."""
    await conn.execute(
        "DELETE FROM readings_hourly WHERE hour >= $1 AND hour < $2",
        ms_to_dt(day_start_ms),
        ms_to_dt(day_start_ms + 24 * HOUR_MS),
    )


async def dirty_before(conn: asyncpg.Connection, before_ms: int) -> None:
    """In the transaction that dropped TimescaleDB chunks before `before_ms`: every rolled-up hour
    before it is dirty, so the refresher recomputes it from what is left (chunk bounds need not be
    the cut's: no assumption on them is needed)."""
    await conn.execute(
        """INSERT INTO readings_hourly_dirty (hour)
           SELECT DISTINCT hour FROM readings_hourly WHERE hour < $1 ORDER BY hour
           ON CONFLICT (hour, shard) DO UPDATE SET version = readings_hourly_dirty.version + 1""",
        ms_to_dt(before_ms),
    )
