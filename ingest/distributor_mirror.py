"""The one mirror of the RewardDistributor's logs into the database, run by the `epochs` part of
`depin run` (and by the demo).

Every DEPIN_DISTRIBUTOR_POLL_S it reads the distributor's logs from its cursor up to latest −
DEPIN_CHAIN_CONFIRMATIONS, in chunks of `chunk_blocks`, one `eth_getLogs` per chunk for all six events
(`ingest/core/distributor_log.py`), and stores each chunk's rows with the cursor (the chunk's last
block and its hash) in one transaction (`PayoutStore.save`):

- EpochPublished, RootAccepted, RootVetoed, Claimed → `distributor_events`, so an API-only process
  answers `GET /v1/owners/{address}/rewards` from the database;
- Deposited → `market_deposits` (a prepaid key's credit, the epoch closer's charges);
- BountyCreated → `bounties` (`GET /v1/bounties`, the epoch closer's slices and refunds).

Rows are upserts on (tx_hash, log_index) and a chunk's rows replace what was stored for its blocks,
so a replay (a restart, a second process) adds nothing. A fresh database or a reorg below the cursor
(the cursor block's hash changed, or the chain is below it) rewinds the cursor to the deployment block
and replays, rows kept until their range is read again (a deposit no longer on chain disappears then,
and the key's credit with it); another distributor in the deployment file forgets every row first.
The epoch closer reads deposits and bounties up to the cursor (`through_block` in the manifest).

Guardian watch: a RootVetoed stored for the first time marks its epoch 'vetoed' (in the same
transaction), counts `depin_epochs_vetoed_total`, logs one ALERT line and calls `on_veto` (the
scheduler then reports itself failing in /readyz until an epoch is published again). Nothing is
republished: the vetoed number is spent on chain and the next epoch's cumulative root carries the
vetoed epoch's amounts (docs/DESIGN.md §6).

Health, for /readyz ("distributor", README "Readiness"): `failing` after a failed pass (RPC or
database), `last_ok` when a pass last caught up with the confirmed head.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hexbytes import HexBytes

from devices.chain.distributor import DistributorClient
from ingest import metrics
from ingest.adapters.store.payouts import PayoutStore
from ingest.core.distributor_log import EVENTS, Cursor, payout_blocks, ranges, replay_reason, sort_logs

log = logging.getLogger(__name__)

CHUNK_BLOCKS = 5_000


class DistributorMirror:
    def __init__(
        self,
        store: PayoutStore,
        client: DistributorClient,
        *,
        confirmations: int = 0,
        poll_s: float = 2.0,
        chunk_blocks: int = CHUNK_BLOCKS,
        on_veto: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.confirmations = confirmations
        self.poll_s = poll_s
        self.chunk_blocks = chunk_blocks
        self.on_veto = on_veto
        self.block: int | None = None  # last block mirrored
        self._window_s: int | None = None
        contract = client.contract
        self._events = {
            bytes(HexBytes(getattr(contract.events, name)().topic)): getattr(contract.events, name)()
            for name in EVENTS
        }
        self._topics = ["0x" + topic.hex() for topic in self._events]
        # Health (/readyz "distributor"): monotonic clock.
        self.watch_since = time.monotonic()
        self.last_ok: float | None = None
        self.failing = False
        self.last_error: str | None = None

    async def _challenge_window(self) -> int:
        if self._window_s is None:
            self._window_s = int(await self.client.contract.functions.challengeWindow().call())
        return self._window_s

    async def sync_once(self) -> int:
        """Mirror what is confirmed now; returns the rows written (payout events, deposits, bounties)."""
        w3 = self.client.w3
        address = self.client.contract.address
        start = self.client.deployment.block
        head = int(await w3.eth.block_number)
        target = head - self.confirmations
        state = await self.store.mirror_state()
        cursor = None if state is None else Cursor(state.distributor, state.block, state.block_hash)
        chain_hash = None
        if cursor is not None and cursor.block_hash is not None and cursor.block <= head:
            chain_hash = bytes((await w3.eth.get_block(cursor.block))["hash"])
        reason = replay_reason(cursor, address, head, chain_hash)
        if reason is not None:
            window = await self._challenge_window()
            if cursor is not None and cursor.distributor != address:
                log.warning("distributor mirror: %s (%s); forgetting its rows", reason, address)
                await self.store.reset(address, start - 1, window)
            else:
                if cursor is not None:
                    log.warning(
                        "distributor mirror: %s; replaying from the deployment block %d", reason, start
                    )
                await self.store.rewind(address, start - 1, window)
            state = await self.store.mirror_state()
        assert state is not None
        written = 0
        chunks = ranges(state.block + 1, target, self.chunk_blocks)
        for i, (frm, to) in enumerate(chunks):
            logs: Any = await w3.eth.get_logs(
                {"address": address, "fromBlock": frm, "toBlock": to, "topics": [self._topics]}
            )
            decoded = [self._events[bytes(lg["topics"][0])].process_log(lg) for lg in logs if lg["topics"]]
            times = {}
            for n in sorted(payout_blocks(decoded)):
                times[n] = datetime.fromtimestamp(int((await w3.eth.get_block(n))["timestamp"]), UTC)
            last_hash = bytes((await w3.eth.get_block(to))["hash"])
            rows = sort_logs(decoded, times, frm, to, last_hash)
            # A replay's last range also drops rows above it (the chain may now be shorter than they);
            # otherwise rows above are another process's, a poll ahead of this one: left alone.
            above = reason is not None and i == len(chunks) - 1
            for epoch in await self.store.save(rows, drop_above=above):
                self._vetoed(epoch)
            written += len(rows)
            if rows.deposits or rows.bounties:
                log.info(
                    "distributor mirror: %d deposits, %d bounties in blocks %d..%d",
                    len(rows.deposits),
                    len(rows.bounties),
                    frm,
                    to,
                )
            self.block = to
            metrics.DISTRIBUTOR_MIRROR_BLOCK.set(to)
        if self.block is None:
            self.block = state.block
        metrics.DISTRIBUTOR_MIRROR_LAG.set(head - self.block)
        self.failing, self.last_error, self.last_ok = False, None, time.monotonic()
        return written

    def _vetoed(self, epoch: int) -> None:
        metrics.EPOCHS_VETOED.inc()
        log.error(
            "ALERT epoch %d: GUARDIAN_ROLE vetoed its root on chain; marked 'vetoed', not republished "
            "(the number is spent; the next epoch's cumulative root carries its amounts): an operator "
            "must find out why before that root is published",
            epoch,
        )
        if self.on_veto is not None:
            self.on_veto(epoch)

    async def run(self) -> None:
        """Sync every `poll_s` until cancelled; a failed pass (RPC or database away) is logged, counted
        (`depin_distributor_mirror_errors_total`), shown in /readyz and retried at the next poll."""
        failures = 0
        while True:
            try:
                await self.sync_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.failing, self.last_error = True, f"{type(exc).__name__}: {exc}"[:300]
                metrics.DISTRIBUTOR_MIRROR_ERRORS.inc()
                log.warning(
                    "distributor mirror: sync failed (%s: %s); retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    self.poll_s,
                    exc_info=failures == 1,
                )
            await asyncio.sleep(self.poll_s)
