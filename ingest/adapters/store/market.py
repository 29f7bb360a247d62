"""Buyers' money (migration 017): the mirror of the distributor's Deposited and BountyCreated events,
what prepaid keys spent, and what each epoch paid from it (`epoch_payouts`). The epoch closer reads
`market_inputs`; the pure split is ingest/core/market.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ingest.adapters.store.rows import PoolStore
from ingest.core import market as mk
from ingest.core.metering import cell7_sql


class DepositEvent(NamedTuple):
    tx_hash: bytes
    log_index: int
    block: int
    account: bytes
    payer: str
    amount: int


class BountyEvent(NamedTuple):
    id: int
    tx_hash: bytes
    log_index: int
    block: int
    funder: str
    start_epoch: int
    end_epoch: int
    cells: tuple[int, ...]
    amount: int


class BountyRow(NamedTuple):
    id: int
    funder: str
    start_epoch: int
    end_epoch: int
    cells: tuple[int, ...]
    amount: int
    block: int
    paid: int  # to devices so far
    refunded: int
    settled_epoch: int | None


def _signed(cell: int) -> int:
    # H3 indexes fit in 63 bits; a uint64 from the chain above that is not a cell and matches nothing
    return cell if cell < 2**63 else -1


class MarketStore(PoolStore):
    """Tables `market_deposits`, `bounties`, `market_sync`, `usage_spend`, `epoch_payouts`."""

    async def market_synced_block(self) -> int | None:
        v = await self.pool.fetchval("SELECT block FROM market_sync WHERE id = 1")
        return None if v is None else int(v)

    async def save_market_events(
        self, deposits: Sequence[DepositEvent], bounties: Sequence[BountyEvent], through_block: int
    ) -> int:
        """Store mirrored events (again: ignored) and advance the watermark, in one transaction.
        Returns how many rows were new."""
        async with self.pool.acquire() as conn, conn.transaction():
            new = 0
            for d in deposits:
                new += await conn.fetchval(
                    """WITH i AS (
                           INSERT INTO market_deposits (tx_hash, log_index, block, account, payer, amount)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1)
                       SELECT count(*) FROM i""",
                    *d,
                )
            for b in bounties:
                new += await conn.fetchval(
                    """WITH i AS (INSERT INTO bounties (id, tx_hash, log_index, block, funder, start_epoch,
                                                    end_epoch, cells, amount)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING 1)
                       SELECT count(*) FROM i""",
                    b.id,
                    b.tx_hash,
                    b.log_index,
                    b.block,
                    b.funder,
                    b.start_epoch,
                    b.end_epoch,
                    [_signed(c) for c in b.cells],
                    b.amount,
                )
            await conn.execute(
                """INSERT INTO market_sync (id, block) VALUES (1, $1)
                   ON CONFLICT (id) DO UPDATE SET block = greatest(market_sync.block, EXCLUDED.block)""",
                through_block,
            )
        return int(new)

    async def market_inputs(self, epoch: int, through_block: int) -> mk.MarketInputs:
        """Everything the market split of `epoch` reads, as stored now (see MarketInputs)."""
        async with self.pool.acquire() as conn:
            spends = [
                mk.Spend(r["key_id"], int(r["cell"]), int(r["epoch"]), int(r["amount"]))
                for r in await conn.fetch(
                    """SELECT key_id, cell, epoch, amount FROM usage_spend WHERE spent_epoch = $1
                       ORDER BY key_id, cell, epoch""",
                    epoch,
                )
            ]
            keys = sorted({s.key_id for s in spends})
            accounts = {mk.account_of(k): k for k in keys}
            deposited = {
                accounts[bytes(r["account"])]: int(r["amount"])
                for r in await conn.fetch(
                    """SELECT account, sum(amount) AS amount FROM market_deposits
                       WHERE account = ANY($1::bytea[]) AND block <= $2 GROUP BY account""",
                    list(accounts),
                    through_block,
                )
            }
            before = {
                r["key_id"]: int(r["amount"])
                for r in await conn.fetch(
                    """SELECT key_id, sum(amount) AS amount FROM usage_spend
                       WHERE key_id = ANY($1::text[]) AND spent_epoch < $2 GROUP BY key_id""",
                    keys,
                    epoch,
                )
            }
            pairs = {(s.cell, s.epoch) for s in spends if 1 <= s.epoch < epoch}
            collectors = []
            if pairs:
                rows = await conn.fetch(
                    f"""SELECT cell7, epoch, device_id, owner, readings FROM (
                            SELECT {cell7_sql("cell")} AS cell7, epoch, device_id, owner, readings
                            FROM device_rewards
                            WHERE epoch = ANY($1::bigint[]) AND rank > 0 AND readings > 0) d
                        WHERE cell7 = ANY($2::bigint[])
                        ORDER BY epoch, cell7, device_id""",
                    sorted({m for _, m in pairs}),
                    sorted({c for c, _ in pairs}),
                )
                collectors = [
                    mk.Collector(
                        int(r["cell7"]), int(r["epoch"]), bytes(r["device_id"]), r["owner"], r["readings"]
                    )
                    for r in rows
                    if (int(r["cell7"]), int(r["epoch"])) in pairs
                ]
            bounties = [
                mk.Bounty(
                    int(r["id"]),
                    r["funder"],
                    int(r["start_epoch"]),
                    int(r["end_epoch"]),
                    tuple(int(c) for c in r["cells"]),
                    int(r["amount"]),
                    int(r["paid"]),
                )
                for r in await conn.fetch(
                    """SELECT b.id, b.funder, b.start_epoch, b.end_epoch, b.cells, b.amount,
                              coalesce((SELECT sum(p.amount) FROM epoch_payouts p
                                        WHERE p.kind = 'bounty' AND p.ref = b.id::text AND p.epoch < $1), 0)
                              AS paid
                       FROM bounties b
                       WHERE b.block <= $2 AND b.start_epoch <= $1
                         AND NOT EXISTS (SELECT 1 FROM epoch_payouts p
                                         WHERE p.kind = 'refund' AND p.ref = b.id::text AND p.epoch < $1)
                       ORDER BY b.id""",
                    epoch,
                    through_block,
                )
            ]
        return mk.MarketInputs(
            through_block=through_block,
            accounts=[mk.Account(k, deposited.get(k, 0), before.get(k, 0)) for k in keys],
            spends=spends,
            collectors=collectors,
            bounties=bounties,
        )

    async def bounties(self) -> list[BountyRow]:
        """Every mirrored bounty with what it paid and refunded so far, newest first."""
        rows = await self.pool.fetch(
            """SELECT b.id, b.funder, b.start_epoch, b.end_epoch, b.cells, b.amount, b.block,
                      coalesce((SELECT sum(amount) FROM epoch_payouts p
                                WHERE p.kind = 'bounty' AND p.ref = b.id::text), 0) AS paid,
                      coalesce((SELECT sum(amount) FROM epoch_payouts p
                                WHERE p.kind = 'refund' AND p.ref = b.id::text), 0) AS refunded,
                      (SELECT min(epoch) FROM epoch_payouts p
                       WHERE p.kind = 'refund' AND p.ref = b.id::text) AS settled_epoch
               FROM bounties b ORDER BY b.id DESC"""
        )
        return [
            BountyRow(
                int(r["id"]),
                r["funder"],
                int(r["start_epoch"]),
                int(r["end_epoch"]),
                tuple(int(c) for c in r["cells"]),
                int(r["amount"]),
                int(r["block"]),
                int(r["paid"]),
                int(r["refunded"]),
                r["settled_epoch"],
            )
            for r in rows
        ]

    async def credit(self, key_id: str) -> tuple[int, int]:
        """(deposited, spent) of a key, in token base units."""
        row = await self.pool.fetchrow(
            """SELECT coalesce((SELECT sum(amount) FROM market_deposits WHERE account = $1), 0) AS deposited,
                      coalesce((SELECT sum(amount) FROM usage_spend WHERE key_id = $2), 0) AS spent""",
            mk.account_of(key_id),
            key_id,
        )
        return int(row["deposited"]), int(row["spent"])


async def save_payouts(conn: Any, epoch: int, rows: Sequence[tuple[str, str, str, int]]) -> None:
    """The epoch's `epoch_payouts` rows, inside the transaction that stores the epoch."""
    if rows:
        await conn.copy_records_to_table(
            "epoch_payouts",
            columns=["epoch", "kind", "ref", "owner", "amount"],
            records=[(epoch, *r) for r in rows],
        )
