"""Epoch close → score (SQL) → rewards → Merkle root → manifest → publish on chain.

Each step is idempotent and resumable: the result of closing is stored before anything touches the
chain; the signed publish transaction is journaled before it is broadcast, so after a crash the same
transaction is rebroadcast (never re-signed with a new nonce), and the contract itself refuses a
second publish for an epoch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hexbytes import HexBytes

from devices.chain import DistributorClient
from ingest import metrics
from ingest.adapters.store import Store
from ingest.core.merkle import CumulativeMerkleTree
from ingest.core.rewards import RewardParams, cumulative, inputs_digest, split_epoch
from ingest.core.schedule import epoch_bounds, epoch_of

log = logging.getLogger(__name__)

ZERO_ROOT = b"\x00" * 32


@dataclass(frozen=True, slots=True)
class EpochConfig:
    genesis_ms: int
    length_ms: int
    emission: int
    max_devices_per_cell: int = 10
    grace_ms: int = 5_000


def _unhex(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


class Epochs:
    def __init__(self, store: Store, distributor: DistributorClient | None, config: EpochConfig) -> None:
        self.store = store
        self.distributor = distributor
        self.config = config

    def params(self) -> RewardParams:
        return RewardParams(
            emission=self.config.emission, max_devices_per_cell=self.config.max_devices_per_cell
        )

    async def close(self, epoch: int) -> dict[str, Any]:
        """Score the epoch from stored readings and save the manifest (once; later calls return it)."""
        existing = await self.store.get_epoch(epoch)
        if existing is not None:
            return existing
        start_ms, end_ms = epoch_bounds(epoch, self.config.genesis_ms, self.config.length_ms)
        rows = await self.store.epoch_coverage(start_ms, end_ms)
        params = self.params()
        split = split_epoch(rows, params)
        previous = await self.store.cumulative_by_owner(epoch)
        totals = cumulative(previous, split.owner_amounts)
        tree = CumulativeMerkleTree(sorted(totals.items())) if totals else None
        root = tree.root if tree else ZERO_ROOT
        digest = inputs_digest(rows, params, None, epoch)
        owner_rows = [
            (
                owner,
                split.owner_amounts.get(owner, 0),
                total,
                ["0x" + p.hex() for p in tree.proof(owner)] if tree else [],
            )
            for owner, total in sorted(totals.items())
        ]
        device_rows = [(d.device_id, d.owner, d.cell, d.readings, d.amount) for d in split.device_amounts]
        manifest = {
            "epoch": epoch,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "params": {
                k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in dataclasses.asdict(params).items()
            },
            "inputs_digest": digest.hex(),
            "cells": split.cells,
            "allocated": str(split.allocated),
            "unissued": str(split.unissued),
            "root": "0x" + root.hex(),
            "devices": [
                {"device_id": d.hex(), "owner": o, "cell": hex(c), "readings": n, "amount": str(a)}
                for d, o, c, n, a in device_rows
            ],
            "owners": [{"owner": o, "amount": str(a), "cumulative": str(c)} for o, a, c, _ in owner_rows],
        }
        await self.store.save_epoch_result(
            epoch,
            start_ms,
            end_ms,
            params.emission,
            split.allocated,
            split.unissued,
            root,
            digest,
            manifest,
            device_rows,
            owner_rows,
        )
        log.info(
            "epoch %d closed: %d cells, allocated %d, root 0x%s",
            epoch,
            split.cells,
            split.allocated,
            root.hex(),
        )
        return await self._row(epoch)

    async def publish(self, epoch: int) -> dict[str, Any]:
        """Put the epoch's root on chain exactly once; resumes a journaled transaction after a crash."""
        if self.distributor is None:
            raise RuntimeError("no chain configured: cannot publish")
        row = await self._row(epoch)
        if row["status"] in ("published", "settled"):
            return row
        root = _unhex(row["root"])
        if root == ZERO_ROOT:
            # Nobody has ever earned: no tree to commit to (the contract refuses a zero root).
            await self.store.settle_without_tx(epoch)
            log.info("epoch %d had nothing to pay; settled without a transaction", epoch)
            return await self._row(epoch)
        signer = self.distributor.signer
        assert signer is not None, "publishing needs the REWARDS_ROLE key"
        if row["raw_tx"] is None:
            call = self.distributor.publish_epoch_fn(epoch, root, int(row["allocated"]))
            raw, tx_hash, nonce = await signer.sign(call)
            await self.store.journal_tx(epoch, raw, tx_hash, nonce)
        else:
            raw, tx_hash = _unhex(row["raw_tx"]), _unhex(row["tx_hash"])
        try:
            await signer.broadcast(raw)
        except Exception as exc:  # already known / already mined after a crash: the receipt decides
            log.info("rebroadcast of epoch %d tx: %s", epoch, exc)
        receipt = await self.distributor.w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), timeout=120)
        if receipt["status"] != 1:
            raise RuntimeError(f"publishEpoch({epoch}) reverted in tx 0x{tx_hash.hex()}")
        await self.store.mark_published(epoch, tx_hash, receipt["blockNumber"])
        metrics.EPOCHS_PUBLISHED.inc()
        log.info("epoch %d published in block %d", epoch, receipt["blockNumber"])
        return await self._row(epoch)

    async def _row(self, epoch: int) -> dict[str, Any]:
        row = await self.store.get_epoch(epoch)
        if row is None:
            raise LookupError(f"epoch {epoch} is not closed")
        return row

    async def close_and_publish(self, epoch: int) -> dict[str, Any]:
        await self.close(epoch)
        return await self.publish(epoch)

    async def run(self, clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        """Close each epoch once its end plus the grace period has passed."""
        while True:
            last = await self.store.last_epoch()
            if last is not None and (await self._row(last))["status"] == "closed":
                nxt = last  # closed before a crash but never published: finish it first
            elif last is None:
                nxt = epoch_of(clock(), self.config.genesis_ms, self.config.length_ms) or 1
            else:
                nxt = last + 1
            _, end_ms = epoch_bounds(nxt, self.config.genesis_ms, self.config.length_ms)
            wait_ms = end_ms + self.config.grace_ms - clock()
            if wait_ms > 0:
                await asyncio.sleep(min(wait_ms / 1000, 60))
                continue
            try:
                await self.close_and_publish(nxt)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("closing epoch %d failed; retrying", nxt)
                await asyncio.sleep(5)
