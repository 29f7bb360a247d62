"""The distributor's events in the database (migrations 017, 018, 022): written by the one mirror of
the RewardDistributor's logs the `epochs` part runs (ingest/distributor_mirror.py) — payout events into
`distributor_events`, deposits into `market_deposits`, bounties into `bounties`, one cursor
(`distributor_mirror`) — and read by `GET /v1/owners/{address}/rewards` (ingest/api/rewards.py), which
an API-only process answers without a chain, by the API's credit and by the epoch closer
(ingest/adapters/store/market.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.adapters.store.rows import PoolStore, dt_to_ms
from ingest.core.distributor_log import DistributorEvent, MirroredRange

__all__ = ["DistributorEvent", "MirrorState", "PayoutStore"]


@dataclass(frozen=True, slots=True)
class MirrorState:
    distributor: str
    block: int
    block_hash: bytes | None
    challenge_window_s: int


@dataclass(frozen=True, slots=True)
class OwnerEpochAmount:
    epoch: int
    status: str
    amount: int
    cumulative: int


@dataclass(frozen=True, slots=True)
class RootOnChain:
    """A root that pays the owner `cumulative` (their leaf in the epoch's tree, as stored)."""

    epoch: int
    cumulative: int
    claimable_from_ms: int | None  # pending: when its challenge window ends; None once accepted


@dataclass(frozen=True, slots=True)
class OwnerRewards:
    owner: str
    as_of_block: int | None  # None: the mirror has not run yet (claimed and roots unknown)
    cumulative: int  # the owner's latest cumulative total over every closed epoch
    claimed: int
    accepted: RootOnChain | None
    pending: RootOnChain | None
    epochs: list[OwnerEpochAmount]

    @property
    def claimable(self) -> int:
        return 0 if self.accepted is None else max(0, self.accepted.cumulative - self.claimed)


def _signed(cell: int) -> int:
    # H3 indexes fit in 63 bits; a uint64 from the chain above that is not a cell and matches nothing
    return cell if cell < 2**63 else -1


def _spellings(owner: str) -> list[str]:
    """owner_rewards keeps the address as the registry gave it: look it up by the index, not lower()."""
    return sorted({owner, owner.lower(), "0x" + owner[2:].upper()})


class PayoutStore(PoolStore):
    """Tables `distributor_events`, `market_deposits`, `bounties` (written here only) and the cursor
    `distributor_mirror`; marks `epochs` vetoed; reads `owner_rewards`."""

    async def mirror_state(self) -> MirrorState | None:
        row = await self.pool.fetchrow("SELECT * FROM distributor_mirror")
        if row is None:
            return None
        return MirrorState(
            row["distributor"],
            row["block"],
            None if row["block_hash"] is None else bytes(row["block_hash"]),
            row["challenge_window"],
        )

    async def reset(self, distributor: str, block: int, challenge_window_s: int) -> None:
        """Forget every mirrored row (payout events, deposits, bounties) and start again after `block`:
        another distributor in the deployment file (its rows are not this one's)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM distributor_events")
            await conn.execute("DELETE FROM market_deposits")
            await conn.execute("DELETE FROM bounties")
            await self._set_cursor(conn, distributor, block, challenge_window_s)

    async def rewind(self, distributor: str, block: int, challenge_window_s: int) -> None:
        """Move the cursor back to `block` and keep the rows: the next passes read the blocks after it
        again and each range's rows replace what was stored for those blocks (`save`), so a credit or an
        owner's claims never drop to nothing while a replay after a reorg runs."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._set_cursor(conn, distributor, block, challenge_window_s)

    @staticmethod
    async def _set_cursor(conn: Any, distributor: str, block: int, challenge_window_s: int) -> None:
        await conn.execute(
            """INSERT INTO distributor_mirror (distributor, block, block_hash, challenge_window)
               VALUES ($1, $2, NULL, $3)
               ON CONFLICT (one) DO UPDATE SET distributor = $1, block = $2, block_hash = NULL,
                   challenge_window = $3, updated_at = now()""",
            distributor,
            block,
            challenge_window_s,
        )

    async def save(self, rows: MirroredRange, *, drop_above: bool = False) -> list[int]:
        """Store a range's rows and move the cursor to its last block, in one transaction. The rows
        replace whatever the three tables held for blocks [rows.first, rows.last] (and above it with
        `drop_above`: a replay's last range), so a replay after a reorg drops what is no longer on
        chain; writes are upserts on (tx_hash, log_index) (a bounty: on its id), so a replay or a
        second process adds nothing. Each RootVetoed that is news marks its epoch 'vetoed' (unless it
        is already); returns those epochs (for the alert), including a vetoed epoch this database
        never stored."""
        vetoed: list[int] = []
        upper = None if drop_above else rows.last  # None: everything from rows.first up
        async with self.pool.acquire() as conn, conn.transaction():
            for table, column in (
                ("distributor_events", "block_number"),
                ("market_deposits", "block"),
                ("bounties", "block"),
            ):
                await conn.execute(
                    f"DELETE FROM {table} WHERE {column} >= $1 AND ($2::bigint IS NULL OR {column} <= $2)",
                    rows.first,
                    upper,
                )
            for e in rows.events:
                new = await conn.fetchval(
                    """INSERT INTO distributor_events (tx_hash, log_index, block_number, block_hash,
                           block_time, event, epoch, account, amount, cumulative, root, total)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                       ON CONFLICT (tx_hash, log_index) DO UPDATE SET block_number = $3, block_hash = $4,
                           block_time = $5, event = $6, epoch = $7, account = $8, amount = $9,
                           cumulative = $10, root = $11, total = $12
                       RETURNING CASE WHEN xmax = 0 THEN event END""",
                    e.tx_hash,
                    e.log_index,
                    e.block_number,
                    e.block_hash,
                    e.block_time,
                    e.event,
                    e.epoch,
                    e.account,
                    e.amount,
                    e.cumulative,
                    e.root,
                    e.total,
                )
                if new == "RootVetoed":
                    status = await conn.fetchval(
                        "SELECT status FROM epochs WHERE epoch = $1 FOR UPDATE", e.epoch
                    )
                    if status != "vetoed":  # news (a replay after a reorg does not alert again)
                        await conn.execute(
                            """UPDATE epochs SET status = 'vetoed', vetoed_at = now()
                               WHERE epoch = $1 AND status <> 'refused'""",
                            e.epoch,
                        )
                        vetoed.append(e.epoch)
            if rows.deposits:
                await conn.executemany(
                    """INSERT INTO market_deposits (tx_hash, log_index, block, account, payer, amount)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (tx_hash, log_index) DO UPDATE
                           SET block = $3, account = $4, payer = $5, amount = $6""",
                    [tuple(d) for d in rows.deposits],
                )
            if rows.bounties:
                await conn.executemany(
                    """INSERT INTO bounties (id, tx_hash, log_index, block, funder, start_epoch, end_epoch,
                                             cells, amount)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                       ON CONFLICT (id) DO UPDATE SET tx_hash = $2, log_index = $3, block = $4,
                           funder = $5, start_epoch = $6, end_epoch = $7, cells = $8, amount = $9""",
                    [
                        (
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
                        for b in rows.bounties
                    ],
                )
            await conn.execute(
                "UPDATE distributor_mirror SET block = $1, block_hash = $2, updated_at = now()",
                rows.last,
                rows.last_hash,
            )
        return vetoed

    async def owner_rewards(self, owner: str, epochs: int) -> OwnerRewards:
        """What the owner earned per epoch (the newest `epochs`), in total, claimed so far and
        claimable now, from the mirrored events: the latest accepted root pays the owner's cumulative
        amount of that epoch; a root published later and not vetoed is accepted once its challenge
        window has passed (the contract promotes it lazily, and a claim does), else pending."""
        names = _spellings(owner)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            rows = await conn.fetch(
                """SELECT o.epoch, e.status, o.amount, o.cumulative
                   FROM owner_rewards o JOIN epochs e USING (epoch)
                   WHERE o.owner = ANY($1::text[]) ORDER BY o.epoch DESC LIMIT $2""",
                names,
                epochs,
            )
            latest = await conn.fetchval(
                """SELECT cumulative FROM owner_rewards WHERE owner = ANY($1::text[])
                   ORDER BY epoch DESC LIMIT 1""",
                names,
            )
            state = await conn.fetchrow("SELECT block, challenge_window FROM distributor_mirror")
            claimed = await conn.fetchval(
                """SELECT max(cumulative) FROM distributor_events
                   WHERE event = 'Claimed' AND account = $1""",
                owner.lower(),
            )
            accepted_epoch = await conn.fetchval(
                "SELECT max(epoch) FROM distributor_events WHERE event = 'RootAccepted'"
            )
            window_s = 0 if state is None else int(state["challenge_window"])
            # The latest publish after the accepted root that no veto dropped.
            candidate = await conn.fetchrow(
                """SELECT p.epoch, p.block_time, p.block_time + make_interval(secs => $2) <= now() AS past
                   FROM distributor_events p
                   WHERE p.event = 'EpochPublished' AND p.epoch > $1
                     AND NOT EXISTS (SELECT 1 FROM distributor_events v
                                     WHERE v.event = 'RootVetoed' AND v.epoch = p.epoch)
                   ORDER BY p.epoch DESC LIMIT 1""",
                accepted_epoch or 0,
                float(window_s),
            )

            async def cumulative_at(epoch: int) -> int:
                value = await conn.fetchval(
                    """SELECT cumulative FROM owner_rewards WHERE owner = ANY($1::text[]) AND epoch <= $2
                       ORDER BY epoch DESC LIMIT 1""",
                    names,
                    epoch,
                )
                return 0 if value is None else int(value)

            accepted = pending = None
            if candidate is not None and candidate["past"]:
                accepted_epoch = candidate["epoch"]
                candidate = None
            if accepted_epoch:
                accepted = RootOnChain(accepted_epoch, await cumulative_at(accepted_epoch), None)
            if candidate is not None:
                until = dt_to_ms(candidate["block_time"]) + window_s * 1000
                pending = RootOnChain(candidate["epoch"], await cumulative_at(candidate["epoch"]), until)
        return OwnerRewards(
            owner=owner,
            as_of_block=None if state is None else int(state["block"]),
            cumulative=0 if latest is None else int(latest),
            claimed=0 if claimed is None else int(claimed),
            accepted=accepted,
            pending=pending,
            epochs=[
                OwnerEpochAmount(r["epoch"], r["status"], int(r["amount"]), int(r["cumulative"]))
                for r in rows
            ],
        )
