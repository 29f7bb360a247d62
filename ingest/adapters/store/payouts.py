"""The distributor's events in the database (migration 018): written by the mirror the `epochs` part
runs (ingest/distributor_mirror.py), read by `GET /v1/owners/{address}/rewards` (ingest/api/rewards.py),
which an API-only process answers without a chain."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ingest.adapters.store.rows import PoolStore, dt_to_ms


@dataclass(frozen=True, slots=True)
class DistributorEvent:
    """One decoded log of the RewardDistributor. `account`, `amount`, `cumulative`: Claimed only;
    `root`: EpochPublished, RootAccepted, RootVetoed; `total`: EpochPublished, RootAccepted."""

    tx_hash: bytes
    log_index: int
    block_number: int
    block_hash: bytes
    block_time: datetime
    event: str
    epoch: int
    account: str | None = None
    amount: int | None = None
    cumulative: int | None = None
    root: bytes | None = None
    total: int | None = None


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


def _spellings(owner: str) -> list[str]:
    """owner_rewards keeps the address as the registry gave it: look it up by the index, not lower()."""
    return sorted({owner, owner.lower(), "0x" + owner[2:].upper()})


class PayoutStore(PoolStore):
    """Tables `distributor_events` and `distributor_mirror`; marks `epochs` vetoed; reads
    `owner_rewards`."""

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
        """Forget every mirrored event and start again before `block` (a reorg below the cursor, or
        another distributor in the deployment file)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM distributor_events")
            await conn.execute(
                """INSERT INTO distributor_mirror (distributor, block, block_hash, challenge_window)
                   VALUES ($1, $2, NULL, $3)
                   ON CONFLICT (one) DO UPDATE SET distributor = $1, block = $2, block_hash = NULL,
                       challenge_window = $3, updated_at = now()""",
                distributor,
                block,
                challenge_window_s,
            )

    async def save(self, events: Sequence[DistributorEvent], block: int, block_hash: bytes) -> list[int]:
        """Store events up to `block` (idempotent on (tx_hash, log_index)) and move the cursor, in one
        transaction. Each RootVetoed stored for the first time marks its epoch 'vetoed' (unless it is
        already); returns those epochs (for the alert), including a vetoed epoch this database never
        stored."""
        vetoed: list[int] = []
        async with self.pool.acquire() as conn, conn.transaction():
            for e in events:
                new = await conn.fetchval(
                    """INSERT INTO distributor_events (tx_hash, log_index, block_number, block_hash,
                           block_time, event, epoch, account, amount, cumulative, root, total)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                       ON CONFLICT (tx_hash, log_index) DO NOTHING
                       RETURNING event""",
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
            await conn.execute(
                "UPDATE distributor_mirror SET block = $1, block_hash = $2, updated_at = now()",
                block,
                block_hash,
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
