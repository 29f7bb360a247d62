"""The epoch scheduler's part of the store: coverage to score, epoch results and rewards, the seal
watermark, the scheduler lock, and the publish journal (docs/DESIGN.md §6)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ingest.adapters.store.manifest import ManifestStore
from ingest.adapters.store.market import MarketStore, save_payouts
from ingest.adapters.store.rows import (
    SEAL_LOCK_KEY,
    CellReward,
    DeviceReward,
    EpochRow,
    OwnerReward,
    cell_to_db,
    dt_to_ms,
    fetch_epoch,
    ms_to_dt,
    proof_to_db,
)
from ingest.core import manifest as mf
from ingest.core.boosts import Boost
from ingest.model import CoverageRow

log = logging.getLogger(__name__)

# Advisory-lock key ("depin_sc") held by the epoch scheduler while it decides and acts, so two processes
# running the `epochs` part never close or sign a publish for the same epoch at once.
SCHEDULER_LOCK_KEY = 0x6465_7069_6E5F_7363


def _text(value: str) -> str:
    """A text field of COPY's text format: backslash, tab, newline and carriage return escaped."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _null(value: int | None) -> str:
    return "\\N" if value is None else str(value)


def device_rewards_text(epoch: int, rows: Sequence[DeviceReward]) -> bytes:
    """`device_rewards` rows (epoch, *DeviceReward) in COPY's text format (bytea as \\x hex)."""
    owners: dict[str, str] = {}
    return "".join(
        f"{epoch}\t\\\\x{d[0].hex()}\t{owners.get(d[1]) or owners.setdefault(d[1], _text(d[1]))}\t{d[2]}\t"
        f"{d[3]}\t{d[4]}\t{d[5]}\t{d[6]}\t{d[7]}\t{_null(d[8])}\t{_null(d[9])}\n"
        for d in rows
    ).encode()


def epoch_cells_text(epoch: int, rows: Sequence[CellReward]) -> bytes:
    """`epoch_cells` rows (epoch, *CellReward) in COPY's text format."""
    return "".join(
        f"{epoch}\t{c[0]}\t{c[1]}\t{c[2]}\t{c[3]}\t{c[4]}\t{c[5]}\t{c[6]}\t{c[7]}\t{c[8]}\t{_null(c[9])}\n"
        for c in rows
    ).encode()


class EpochStore(MarketStore, ManifestStore):
    """Tables `epochs`, `device_rewards`, `owner_rewards`, `epoch_seal`; reads `readings` and `devices`."""

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
        # The columns are CoverageRow's fields, in order.
        return [CoverageRow(bytes(device_id), *rest) for device_id, *rest in rows]

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
        device_rewards: Sequence[DeviceReward],
        owner_rewards: Sequence[OwnerReward],
        cell_rewards: Sequence[CellReward] = (),
        payouts: Sequence[tuple[str, str, str, int]] = (),
    ) -> EpochRow:
        """Record a closed epoch and its rewards in one transaction; status 'closed'.

        The manifest is stored in pages (migration 019): `epochs.manifest` keeps its header (any lists
        in `manifest` are left out: `ingest.core.manifest.header_of`), its lists are the rows written
        here (`device_rewards`, `owner_rewards`, `epoch_cells`), read back by `ManifestStore`. The
        summary's columns (params, cells, devices, owners: migration 012) come from the header and
        the row counts, so GET /v1/epochs/{n} never reads the manifest.

        Idempotent: if the epoch is already stored, nothing is changed and the stored row is returned
        (compare it with what you computed).
        """
        header = mf.header_of(manifest)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                new = await conn.fetchval(
                    """INSERT INTO epochs (epoch, start_at, end_at, status, emission, allocated, unissued,
                                           root, inputs_digest, manifest, params, cells, devices, owners,
                                           manifest_paged)
                       VALUES ($1, $2, $3, 'closed', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, true)
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
                    header,
                    header.get("params", {}),
                    header.get("cells", 0),
                    len(device_rewards),
                    len(owner_rewards),
                )
                if new is not None:
                    # In COPY's text format: asyncpg's binary encoding of a Python int as numeric costs
                    # ~2 µs a value, PostgreSQL parses the text faster (50 k rows of each: 0.8 → 0.5 s).
                    if device_rewards:
                        await conn.copy_to_table(
                            "device_rewards",
                            source=io.BytesIO(device_rewards_text(epoch, device_rewards)),
                            columns=["epoch", *DeviceReward._fields],
                            format="text",
                        )
                    if cell_rewards:
                        await conn.copy_to_table(
                            "epoch_cells",
                            source=io.BytesIO(epoch_cells_text(epoch, cell_rewards)),
                            columns=["epoch", *CellReward._fields],
                            format="text",
                        )
                    if owner_rewards:
                        await conn.copy_records_to_table(
                            "owner_rewards",
                            columns=["epoch", "owner", "amount", "cumulative", "proof"],
                            records=[(epoch, o, a, cum, proof_to_db(p)) for o, a, cum, p in owner_rewards],
                        )
                    await save_payouts(conn, epoch, payouts)  # buyers' money (migration 017)
                else:
                    log.info("epoch %s already stored; keeping the stored result", epoch)
            row = await fetch_epoch(conn, epoch)
        assert row is not None
        return row

    async def stationary_classes(self) -> set[int]:
        """Hardware classes without a speed limit: stations (devices/inputs.py is_mobile)."""
        rows = await self.pool.fetch("SELECT id FROM hw_classes WHERE max_speed_kmh = 0")
        return {r["id"] for r in rows}

    async def last_paid(self, epoch: int, lookback: int) -> dict[int, int]:
        """Per cell, the last epoch in [epoch − lookback, epoch) in which it paid anyone (freshness)."""
        rows = await self.pool.fetch(
            """SELECT cell, max(epoch) AS last FROM device_rewards
               WHERE epoch >= $1 AND epoch < $2 AND amount > 0 GROUP BY cell""",
            epoch - lookback,
            epoch,
        )
        return {r["cell"]: r["last"] for r in rows}

    async def usage_by_cell(self, first_epoch: int, last_epoch: int) -> dict[int, int]:
        """Metered units per resolution-7 cell written in epochs first..last (demand), summed in SQL.
        Final once `last_epoch` is sealed: no usage write lands in a sealed epoch (migration 021)."""
        rows = await self.pool.fetch(
            """SELECT cell, sum(units)::bigint AS units FROM usage_demand
               WHERE epoch BETWEEN $1 AND $2 GROUP BY cell""",
            first_epoch,
            last_epoch,
        )
        return {r["cell"]: r["units"] for r in rows if r["units"] > 0}

    async def boosts(self, epoch: int) -> list[Boost]:
        """Stored boosts covering `epoch`, unverified (the caller checks each signature)."""
        rows = await self.pool.fetch(
            """SELECT cell, factor_bps, from_epoch, to_epoch, set_at_ms, signer, signature FROM boosts
               WHERE from_epoch <= $1 AND to_epoch >= $1 ORDER BY id""",
            epoch,
        )
        return [
            Boost(
                r["cell"],
                r["factor_bps"],
                r["from_epoch"],
                r["to_epoch"],
                r["set_at_ms"],
                r["signer"],
                bytes(r["signature"]),
            )
            for r in rows
        ]

    async def add_boost(self, b: Boost) -> int:
        """Store a signed boost; returns its id."""
        value = await self.pool.fetchval(
            """INSERT INTO boosts (cell, factor_bps, from_epoch, to_epoch, set_at_ms, signer, signature)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
            cell_to_db(b.cell),
            b.factor_bps,
            b.from_epoch,
            b.to_epoch,
            b.set_at_ms,
            b.signer,
            b.signature,
        )
        return int(value)

    async def get_epoch(self, epoch: int) -> EpochRow | None:
        return await fetch_epoch(self.pool, epoch)

    async def epoch_progress(self) -> tuple[int | None, int | None]:
        """(highest stored epoch, lowest epoch stored as 'closed' or 'signed': not yet on chain)."""
        row = await self.pool.fetchrow(
            """SELECT max(epoch) AS last,
                      min(epoch) FILTER (WHERE status IN ('closed', 'signed')) AS unpublished
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

    async def journal_tx(self, epoch: int, raw_tx: bytes, tx_hash: bytes, nonce: int) -> bool:
        """Store the signed publish tx before broadcasting it: status 'signed'. False if the epoch is
        missing or past signing (published, settled, refused, vetoed)."""
        status = await self.pool.execute(
            """UPDATE epochs SET status = 'signed', raw_tx = $2, tx_hash = $3, tx_nonce = $4
               WHERE epoch = $1 AND status IN ('closed', 'signed')""",
            epoch,
            raw_tx,
            tx_hash,
            nonce,
        )
        return status == "UPDATE 1"

    async def clear_journal(self, epoch: int, tx_hash: bytes) -> bool:
        """Forget a journaled publish tx that can never succeed (mined and reverted, nonce taken), so a
        new one is signed: back to 'closed'."""
        status = await self.pool.execute(
            """UPDATE epochs SET status = 'closed', raw_tx = NULL, tx_hash = NULL, tx_nonce = NULL
               WHERE epoch = $1 AND tx_hash = $2 AND status IN ('closed', 'signed')""",
            epoch,
            tx_hash,
        )
        return status == "UPDATE 1"

    async def mark_published(
        self, epoch: int, tx_hash: bytes, block: int, block_hash: bytes | None = None
    ) -> bool:
        """Receipt seen in `block` (`block_hash`). Callable again after a reorg moved the tx; False once
        settled, refused or vetoed."""
        status = await self.pool.execute(
            """UPDATE epochs SET status = 'published', tx_hash = $2, block_number = $3, block_hash = $4,
                   published_at = coalesce(published_at, now())
               WHERE epoch = $1 AND status IN ('closed', 'signed', 'published')""",
            epoch,
            tx_hash,
            block,
            block_hash,
        )
        return status == "UPDATE 1"

    async def unpublish(self, epoch: int, tx_hash: bytes, *, reverted: bool = False) -> bool:
        """A reorg dropped the publish tx seen in a receipt: back to 'signed' (the journaled bytes are
        rebroadcast), or to 'closed' when there is no journal (an adopted publish) or the tx now
        reverts (`reverted`: a new tx is signed). Only from 'published' with that tx."""
        status = await self.pool.execute(
            """UPDATE epochs SET
                   status = CASE WHEN raw_tx IS NULL OR $3 THEN 'closed' ELSE 'signed' END,
                   raw_tx = CASE WHEN $3 THEN NULL ELSE raw_tx END,
                   tx_nonce = CASE WHEN $3 THEN NULL ELSE tx_nonce END,
                   tx_hash = CASE WHEN raw_tx IS NULL OR $3 THEN NULL ELSE tx_hash END,
                   block_number = NULL, block_hash = NULL
               WHERE epoch = $1 AND tx_hash = $2 AND status = 'published'""",
            epoch,
            tx_hash,
            reverted,
        )
        return status == "UPDATE 1"

    async def mark_refused(self, epoch: int, reason: str) -> bool:
        """The contract refused the epoch's publish for good: final, journal cleared, never retried."""
        status = await self.pool.execute(
            """UPDATE epochs SET status = 'refused', refused = $2, raw_tx = NULL, tx_hash = NULL,
                   tx_nonce = NULL
               WHERE epoch = $1 AND status IN ('closed', 'signed')""",
            epoch,
            reason,
        )
        return status == "UPDATE 1"

    async def settle_without_tx(self, epoch: int) -> bool:
        """An epoch that commits to nothing (nobody has ever earned) is final without a transaction."""
        status = await self.pool.execute(
            """UPDATE epochs SET status = 'settled', settled_at = now()
               WHERE epoch = $1 AND status = 'closed' AND raw_tx IS NULL""",
            epoch,
        )
        return status == "UPDATE 1"

    async def mark_settled(self, epoch: int, block_hash: bytes | None = None) -> bool:
        """Final past the confirmation depth. Only a published epoch settles, and with `block_hash` only
        if its receipt is still in that block; True also if already settled."""
        status = await self.pool.execute(
            """UPDATE epochs SET status = 'settled', settled_at = coalesce(settled_at, now())
               WHERE epoch = $1 AND (status = 'settled' OR (status = 'published'
                     AND ($2::bytea IS NULL OR block_hash IS NULL OR block_hash = $2)))""",
            epoch,
            block_hash,
        )
        return status == "UPDATE 1"

    async def mark_vetoed(self, epoch: int) -> str | None:
        """GUARDIAN_ROLE vetoed the epoch's root: final ('vetoed'), never republished (its number is
        spent on chain). Returns the status it had, None if it was missing or already vetoed/refused."""
        return await self.pool.fetchval(
            """UPDATE epochs e SET status = 'vetoed', vetoed_at = now()
               FROM (SELECT epoch, status FROM epochs WHERE epoch = $1 FOR UPDATE) old
               WHERE e.epoch = old.epoch AND old.status NOT IN ('vetoed', 'refused')
               RETURNING old.status""",
            epoch,
        )

    async def unsettled(self) -> list[EpochRow]:
        """Published epochs not yet settled, oldest first (the scheduler re-checks their receipts)."""
        rows = await self.pool.fetch(
            "SELECT epoch FROM epochs WHERE status = 'published' ORDER BY epoch LIMIT 100"
        )
        out = []
        for r in rows:
            row = await fetch_epoch(self.pool, r["epoch"])
            if row is not None:
                out.append(row)
        return out
