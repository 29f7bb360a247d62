"""The mirror of buyers' money on chain: the RewardDistributor's Deposited and BountyCreated events,
read from the deployment block on, DEPIN_CHAIN_CONFIRMATIONS deep, into tables `market_deposits` and
`bounties` (ingest/adapters/store/market.py). Run by the `epochs` part of `depin run` every
DEPIN_MARKET_POLL_S seconds. Idempotent on (tx, log index): a replay (a restart, two processes) adds
nothing; the watermark (`market_sync`) only rises.

What reads it: the API's key lookups (a key's credit = deposits − spent) and the epoch closer (the
deposits and bounties up to the watermark at the close, recorded in the manifest as `through_block`).
Reorgs deeper than the confirmations are not undone: run with confirmations the chain makes final.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from eth_utils import to_checksum_address

from devices.chain.distributor import DistributorClient
from devices.protocol.registry_fold import confirmed_height
from ingest import metrics
from ingest.adapters.store.market import BountyEvent, DepositEvent, MarketStore

log = logging.getLogger(__name__)


class MarketMirror:
    def __init__(
        self,
        client: DistributorClient,
        store: MarketStore,
        *,
        start_block: int,
        confirmations: int = 0,
        poll_s: float = 2.0,
        chunk_blocks: int = 5_000,
    ) -> None:
        self.client = client
        self.store = store
        self.start_block = start_block
        self.confirmations = confirmations
        self.poll_s = poll_s
        self.chunk_blocks = chunk_blocks

    async def sync_once(self) -> int:
        """Mirror every confirmed event not mirrored yet; returns how many rows were new."""
        head = await self.client.w3.eth.block_number
        target = confirmed_height(head, self.confirmations)
        synced = await self.store.market_synced_block()
        frm = self.start_block if synced is None else synced + 1
        new = 0
        while frm <= target:
            to = min(frm + self.chunk_blocks - 1, target)
            deposits, bounties = _decode(await self.client.market_events(frm, to))
            new += await self.store.save_market_events(deposits, bounties, to)
            frm = to + 1
            metrics.MARKET_BLOCK.set(to)
        if new:
            log.info("market: %d new deposits/bounties mirrored up to block %d", new, target)
        return new

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.sync_once()
                failing = False
            except Exception as exc:  # the chain or the database away: logged, retried
                metrics.MARKET_ERRORS.inc()
                log.error("market mirror: %r (retrying every %s s)", exc, self.poll_s, exc_info=not failing)
                failing = True
            await asyncio.sleep(self.poll_s)


def _decode(events: list[Any]) -> tuple[list[DepositEvent], list[BountyEvent]]:
    deposits, bounties = [], []
    for ev in events:
        a = ev["args"]
        tx, index, block = bytes(ev["transactionHash"]), int(ev["logIndex"]), int(ev["blockNumber"])
        if ev["event"] == "Deposited":
            deposits.append(
                DepositEvent(
                    tx, index, block, bytes(a["account"]), to_checksum_address(a["payer"]), int(a["amount"])
                )
            )
        else:
            bounties.append(
                BountyEvent(
                    int(a["id"]),
                    tx,
                    index,
                    block,
                    to_checksum_address(a["funder"]),
                    int(a["startEpoch"]),
                    int(a["endEpoch"]),
                    tuple(int(c) for c in a["cells"]),
                    int(a["amount"]),
                )
            )
    return deposits, bounties
