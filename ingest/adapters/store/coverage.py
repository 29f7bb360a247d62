"""The coverage map's queries (ingest/api/coverage.py): per-cell coverage of an epoch and the stored
epochs for the picker. Read-only, on the API's pool.

A closed epoch is read from `device_rewards` (its primary key starts with the epoch), and each listed
cell's newest reading is one backward probe of the `readings (cell, ts)` index. The open epoch is
counted from `readings` over the epoch's time range (its daily partitions, BRIN on ts): the same scan
the epoch close makes, so the API caches it briefly (ingest/api/coverage.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ingest.adapters.store.rows import PoolStore, clamped_dt, dt_to_ms
from ingest.core.coverage import MAX_DEVICE_IDS, EpochSpan


class CellCoverage(NamedTuple):
    cell: int
    devices: int  # distinct devices with a reading in the cell
    device_ids: list[bytes]  # at most MAX_DEVICE_IDS, the most-read first
    readings: int  # unflagged readings (the ones rewards count)
    newest_ms: int | None  # the cell's newest reading in the epoch (None: no longer stored)
    reward: int | None  # token base units paid in the cell (closed epochs), None while open


class CoveragePage(NamedTuple):
    cells: list[CellCoverage]  # the most-read first, at most `limit`
    total: int  # covered cells in all


_CLOSED = f"""
WITH g AS (
    SELECT cell, count(*) AS devices, sum(readings)::bigint AS readings, sum(amount) AS reward,
           (array_agg(device_id ORDER BY readings DESC, device_id))[1:{MAX_DEVICE_IDS}] AS ids,
           count(*) OVER () AS total
    FROM device_rewards WHERE epoch = $1
    GROUP BY cell
    ORDER BY readings DESC, cell
    LIMIT $4)
SELECT g.*, (SELECT max(ts) FROM readings r
           WHERE depin_cell7(r.cell) = depin_cell7(g.cell) AND r.cell = g.cell
             AND r.ts >= $2 AND r.ts < $3) AS newest
FROM g ORDER BY readings DESC, cell"""

_OPEN = f"""
WITH d AS (
    SELECT cell, device_id, count(*) FILTER (WHERE flags = 0) AS readings, max(ts) AS newest
    FROM readings WHERE ts >= $1 AND ts < $2
    GROUP BY cell, device_id)
SELECT cell, count(*) AS devices, sum(readings)::bigint AS readings, NULL::numeric AS reward,
       (array_agg(device_id ORDER BY readings DESC, device_id))[1:{MAX_DEVICE_IDS}] AS ids,
       count(*) OVER () AS total, max(newest) AS newest
FROM d GROUP BY cell
ORDER BY readings DESC, cell
LIMIT $3"""


def _page(rows: list[Any]) -> CoveragePage:
    cells = [
        CellCoverage(
            r["cell"],
            r["devices"],
            [bytes(d) for d in r["ids"]],
            r["readings"],
            None if r["newest"] is None else dt_to_ms(r["newest"]),
            None if r["reward"] is None else int(r["reward"]),
        )
        for r in rows
    ]
    return CoveragePage(cells, rows[0]["total"] if rows else 0)


class CoverageStore(PoolStore):
    """Tables `device_rewards`, `readings`, `epochs`; nothing here writes."""

    async def closed_coverage(self, epoch: int, start_ms: int, end_ms: int, limit: int) -> CoveragePage:
        """A closed epoch's cells from its stored rewards; `start_ms`/`end_ms` bound the newest-reading
        probe to the epoch."""
        rows = await self.pool.fetch(_CLOSED, epoch, clamped_dt(start_ms), clamped_dt(end_ms), limit)
        return _page(rows)

    async def open_coverage(self, start_ms: int, end_ms: int, limit: int) -> CoveragePage:
        """Cells with readings in [start_ms, end_ms), counted from the readings themselves."""
        rows = await self.pool.fetch(_OPEN, clamped_dt(start_ms), clamped_dt(end_ms), limit)
        return _page(rows)

    async def stored_epoch(self, epoch: int) -> EpochSpan | None:
        row = await self.pool.fetchrow(
            "SELECT epoch, start_at, end_at, status FROM epochs WHERE epoch = $1", epoch
        )
        return None if row is None else _span(row)

    async def stored_epochs(self, limit: int, before: int | None = None) -> list[EpochSpan]:
        """Stored epochs, newest first; `before`: only those numbered below it. `covered`: one probe of
        the `device_rewards` primary key each."""
        rows = await self.pool.fetch(
            """SELECT epoch, start_at, end_at, status,
                      EXISTS (SELECT 1 FROM device_rewards r WHERE r.epoch = e.epoch) AS covered
               FROM epochs e
               WHERE epoch < coalesce($2, 9223372036854775807) ORDER BY epoch DESC LIMIT $1""",
            limit,
            before,
        )
        return [_span(r, r["covered"]) for r in rows]

    async def any_readings(self, start_ms: int, end_ms: int) -> bool:
        """Is a reading stored with start_ms <= ts < end_ms (an open epoch covered so far)?"""
        found = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM readings WHERE ts >= $1 AND ts < $2)",
            clamped_dt(start_ms),
            clamped_dt(end_ms),
        )
        return bool(found)


def _span(r: Any, covered: bool | None = None) -> EpochSpan:
    return EpochSpan(r["epoch"], dt_to_ms(r["start_at"]), dt_to_ms(r["end_at"]), r["status"], covered)
