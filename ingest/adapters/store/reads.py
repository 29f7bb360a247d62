"""The API's part of the store: read-only queries (readings pages, rejections, totals, epochs and
rewards), on the API's own pool in production (docs/RELIABILITY.md G34). Rows are typed
(`ingest.adapters.store.rows`); `ingest/api/shapes.py` turns them into the JSON the API documents.
"""

from __future__ import annotations

from typing import Any

from ingest.adapters.store.manifest import ManifestStore
from ingest.adapters.store.queries import device_sql, fetch_page
from ingest.adapters.store.rows import (
    CellReward,
    DeviceCell,
    DeviceReward,
    EpochRewards,
    EpochRow,
    EpochSummary,
    OwnerReward,
    Position,
    ReadingPage,
    RejectionRow,
    Totals,
    bytes_or_none,
    cell_to_db,
    clamped_dt,
    dt_to_ms,
    epoch_row,
    fetch_epoch,
    proof_from_db,
)

# GET /v1/epochs/{n}: small columns only, never `manifest` (an empty dict stands in for it in the EpochRow).
EPOCH_SUMMARY_SQL = """SELECT epoch, start_at, end_at, status, emission, allocated, unissued, root,
       inputs_digest, tx_hash, raw_tx, tx_nonce, block_number, closed_at, published_at,
       params, cells, devices, owners
FROM epochs WHERE epoch = $1"""


class ReadStore(ManifestStore):
    """What the API reads. Nothing here writes."""

    async def readings(
        self,
        *,
        device_id: bytes | None = None,
        cell: int | None = None,
        start_ms: int,
        end_ms: int,
        limit: int = 1000,
        after: Position | None = None,
        max_bytes: int | None = None,
    ) -> ReadingPage:
        """Readings with start_ms <= ts < end_ms, ordered by (ts, device_id, seq, idx).

        Returns the page's rows and `next`: pass it back as `after` for the following page (it is the
        (ts_ms, device_id, seq, idx) of the last item, None when the page was short).
        `max_bytes` also ends the page once its rows' estimated JSON size (vals, media uri and a fixed
        300 bytes per row) passes that many bytes — decided in SQL over at most `limit` rows, so a
        page of large readings is cut short (at least one row, `next` set) instead of being built in
        memory whole.
        """
        args: list[Any] = [clamped_dt(start_ms), clamped_dt(end_ms)]
        conds = ["ts >= $1", "ts < $2"]
        if device_id is not None:
            args.append(device_id)
            conds.append(device_sql(len(args)))
        if cell is not None:  # the cell's block in readings_block_ts, then the cell itself
            args.append(cell_to_db(cell))
            conds.append(f"depin_cell7(cell) = depin_cell7(${len(args)}::bigint) AND cell = ${len(args)}")
        return await fetch_page(
            self.pool, "readings", conds, args, limit=limit, after=after, max_bytes=max_bytes
        )

    async def recent_rejections(self, device_id: bytes | None = None, limit: int = 100) -> list[RejectionRow]:
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
            RejectionRow(id_, bytes(digest), bytes_or_none(dev), seq, reason, detail, topic, dt_to_ms(at))
            for id_, digest, dev, seq, reason, detail, topic, at in await self.pool.fetch(sql, *args)
        ]

    async def stats(self) -> Totals:
        """Totals from the maintained counters (`stats_counters`, added to by every batch in its own
        transaction): a read of a few dozen rows, never a table scan. Cumulative since the database was
        created: rows removed later (retention) stay counted."""
        rows = await self.pool.fetch("SELECT name, sum(n)::bigint AS n FROM stats_counters GROUP BY name")
        totals = {r["name"]: r["n"] for r in rows}
        return Totals(
            packets=totals.get("packets", 0),
            readings=totals.get("readings", 0),
            rejections={
                name.removeprefix("rejections:"): n
                for name, n in sorted(totals.items())
                if name.startswith("rejections:")
            },
        )

    async def counts(self) -> Totals:
        """Exact counts by full scans, for the demo summary and tests. The API serves `stats()`."""
        async with self.pool.acquire() as conn:
            packets = await conn.fetchval("SELECT count(*) FROM packets")
            readings = await conn.fetchval("SELECT count(*) FROM readings")
            by_reason = await conn.fetch("SELECT reason, count(*) AS n FROM rejections GROUP BY reason")
        return Totals(packets, readings, {r["reason"]: r["n"] for r in by_reason})

    async def get_epoch(self, epoch: int) -> EpochRow | None:
        return await fetch_epoch(self.pool, epoch)

    async def epoch_summary(self, epoch: int) -> EpochSummary | None:
        """The epoch without its manifest, from small columns only: `manifest` is never selected (any
        expression on it detoasts the whole jsonb, MBs at scale). params, cells and the lengths of the
        manifest's lists are columns of their own (migration 012), written with the manifest."""
        row = await self.pool.fetchrow(EPOCH_SUMMARY_SQL, epoch)
        if row is None:
            return None
        return EpochSummary(
            epoch_row(row, manifest={}), row["params"], row["cells"], row["devices"], row["owners"]
        )

    async def last_epoch(self) -> int | None:
        value: int | None = await self.pool.fetchval("SELECT max(epoch) FROM epochs")
        return value

    async def epoch_rewards(self, epoch: int) -> EpochRewards:
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
        return EpochRewards(
            devices=[
                DeviceReward(bytes(r["device_id"]), r["owner"], r["cell"], r["readings"], int(r["amount"]))
                for r in devices
            ],
            owners=[_owner_reward(r) for r in owners],
        )

    async def device_epoch(self, epoch: int, device_id: bytes) -> list[DeviceCell]:
        """A device's cells in an epoch with each cell's factors: two primary-key lookups per cell."""
        rows = await self.pool.fetch(
            """SELECT r.device_id, r.owner, r.cell, r.readings, r.amount, r.flagged, r.quality, r.rank,
                      c.base, c.boost, c.freshness, c.demand, c.weight, c.share, c.depth, c.paid
               FROM device_rewards r LEFT JOIN epoch_cells c ON c.epoch = r.epoch AND c.cell = r.cell
               WHERE r.epoch = $1 AND r.device_id = $2 ORDER BY r.cell""",
            epoch,
            device_id,
        )
        out = []
        for r in rows:
            device = DeviceReward(
                bytes(r["device_id"]),
                r["owner"],
                r["cell"],
                r["readings"],
                int(r["amount"]),
                r["flagged"],
                r["quality"],
                r["rank"],
            )
            factors = None
            if r["base"] is not None:
                factors = CellReward(
                    r["cell"],
                    r["base"],
                    r["boost"],
                    r["freshness"],
                    r["demand"],
                    r["weight"],
                    int(r["share"]),
                    r["depth"],
                    int(r["paid"]),
                )
            out.append(DeviceCell(device, factors))
        return out

    async def owner_reward(self, epoch: int, owner: str) -> OwnerReward | None:
        """An owner's amount, cumulative total and claim proof; the address matches case-insensitively."""
        row = await self.pool.fetchrow(
            """SELECT owner, amount, cumulative, proof FROM owner_rewards
               WHERE epoch = $1 AND lower(owner) = lower($2)""",
            epoch,
            owner,
        )
        return None if row is None else _owner_reward(row)


def _owner_reward(r: Any) -> OwnerReward:
    return OwnerReward(r["owner"], int(r["amount"]), int(r["cumulative"]), proof_from_db(r["proof"]))
