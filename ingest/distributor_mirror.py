"""The distributor's events mirrored into the database, run by the `epochs` part of `depin run`.

Every `poll_s` it reads the RewardDistributor's logs (EpochPublished, RootAccepted, RootVetoed,
Claimed) from its cursor up to latest − DEPIN_CHAIN_CONFIRMATIONS, in chunks, and stores them with
the cursor in one transaction each (`PayoutStore.save`; idempotent on (tx_hash, log_index)), so an
API-only process answers `GET /v1/owners/{address}/rewards` (claimed so far, claimable now) from the
database. A fresh database, another distributor in the deployment file, or a reorg below the cursor
(the cursor block's hash changed) replays from the deployment block.

Guardian watch: a RootVetoed stored for the first time marks its epoch 'vetoed' (in the same
transaction), counts `depin_epochs_vetoed_total`, logs one ALERT line and calls `on_veto` (the
scheduler then reports itself failing in /readyz until an epoch is published again). Nothing is
republished: the vetoed number is spent on chain and the next epoch's cumulative root carries the
vetoed epoch's amounts (docs/DESIGN.md §6).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hexbytes import HexBytes

from devices.chain.distributor import DistributorClient
from ingest import metrics
from ingest.adapters.store.payouts import DistributorEvent, PayoutStore

log = logging.getLogger(__name__)

EVENTS = ("EpochPublished", "RootAccepted", "RootVetoed", "Claimed")
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

    async def _challenge_window(self) -> int:
        if self._window_s is None:
            self._window_s = int(await self.client.contract.functions.challengeWindow().call())
        return self._window_s

    async def sync_once(self) -> int:
        """Mirror what is confirmed now; returns the events stored (new or not)."""
        w3 = self.client.w3
        address = self.client.contract.address
        start = self.client.deployment.block
        head = int(await w3.eth.block_number)
        target = head - self.confirmations
        state = await self.store.mirror_state()
        replay = state is None or state.distributor != address
        if not replay and state is not None and state.block > head:
            log.warning(
                "distributor mirror: the chain is below the mirrored block %d; replaying", state.block
            )
            replay = True
        elif not replay and state is not None and state.block_hash is not None:
            block = await w3.eth.get_block(state.block)
            if bytes(block["hash"]) != state.block_hash:
                log.warning(
                    "distributor mirror: block %d changed (a reorg below the mirrored height); "
                    "replaying from the deployment block %d",
                    state.block,
                    start,
                )
                replay = True
        if replay:
            await self.store.reset(address, start - 1, await self._challenge_window())
            state = await self.store.mirror_state()
        assert state is not None
        stored = 0
        frm = state.block + 1
        while frm <= target:
            to = min(frm + self.chunk_blocks - 1, target)
            logs: Any = await w3.eth.get_logs({"address": address, "fromBlock": frm, "toBlock": to})
            events = await self._decode(logs)
            to_block = await w3.eth.get_block(to)
            for epoch in await self.store.save(events, to, bytes(to_block["hash"])):
                self._vetoed(epoch)
            stored += len(events)
            self.block = to
            metrics.DISTRIBUTOR_MIRROR_BLOCK.set(to)
            frm = to + 1
        if self.block is None:
            self.block = state.block
        return stored

    async def _decode(self, logs: Any) -> list[DistributorEvent]:
        times: dict[int, datetime] = {}
        out = []
        for lg in logs:
            topics = lg["topics"]
            event = self._events.get(bytes(topics[0])) if topics else None
            if event is None:
                continue  # role changes and the like
            decoded = event.process_log(lg)
            args = decoded["args"]
            n = int(lg["blockNumber"])
            if n not in times:
                block = await self.client.w3.eth.get_block(n)
                times[n] = datetime.fromtimestamp(int(block["timestamp"]), UTC)
            name = decoded["event"]
            out.append(
                DistributorEvent(
                    tx_hash=bytes(lg["transactionHash"]),
                    log_index=int(lg["logIndex"]),
                    block_number=n,
                    block_hash=bytes(lg["blockHash"]),
                    block_time=times[n],
                    event=name,
                    epoch=int(args["epoch"]),
                    account=str(args["account"]).lower() if name == "Claimed" else None,
                    amount=int(args["amount"]) if name == "Claimed" else None,
                    cumulative=int(args["cumulative"]) if name == "Claimed" else None,
                    root=bytes(args["root"]) if "root" in args else None,
                    total=int(args["total"]) if "total" in args else None,
                )
            )
        return out

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
        """Sync every `poll_s` until cancelled; a failed pass (RPC or database away) is logged and
        retried at the next poll."""
        failures = 0
        while True:
            try:
                await self.sync_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning(
                    "distributor mirror: sync failed (%s: %s); retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    self.poll_s,
                    exc_info=failures == 1,
                )
            await asyncio.sleep(self.poll_s)
