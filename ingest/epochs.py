"""Epoch close → seal → score (SQL) → rewards → Merkle root → manifest → publish on chain.

Each step is idempotent and resumable: the result of closing is stored before anything touches the
chain; the signed publish transaction is journaled before it is broadcast, so after a crash the same
transaction is rebroadcast (never re-signed with a new nonce), and the contract itself refuses a
second publish for an epoch.

`Epochs.run` is the scheduler: it asks `ingest.core.schedule.next_step` what is due (the rule lives
there, pure and table-tested) and carries it out; a failure is logged with the epoch and retried with
backoff, never skipped, and the loop never ends on its own. Clock and sleep are injectable for tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from devices.chain.distributor import DistributorClient
from devices.errors import ChainError, DepinError, NonceTooLowError, SettingsError
from ingest import metrics
from ingest.adapters.distributor import DistributorChain
from ingest.adapters.store import EpochStore
from ingest.adapters.store.rows import EpochRow
from ingest.core.rewards import RewardParams
from ingest.core.schedule import IDLE_POLL_MS, Close, Publish, Step, Wait, epoch_bounds, next_step
from ingest.parts import Parts
from ingest.scoring import ScoringConfig, score_epoch
from ingest.seams import PublishChain

log = logging.getLogger(__name__)

ZERO_ROOT = b"\x00" * 32

# Test-only fault hook (tests/integration/test_epoch_faults.py): a `depin run` whose environment names
# one of these points SIGKILLs itself there, so a test kills the worker exactly after that step.
KILL_AT_ENV = "DEPIN_TEST_EPOCH_KILL_AT"
KILL_POINTS = ("scored", "manifest", "signed", "broadcast", "receipt")


def _fault_point(point: str) -> None:
    if os.environ.get(KILL_AT_ENV) == point:
        log.warning("%s=%s: killing this process (SIGKILL) now", KILL_AT_ENV, point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _block_hash(receipt: Any) -> bytes | None:
    value = receipt.get("blockHash") if hasattr(receipt, "get") else None
    return None if value is None else bytes(value)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EpochError(DepinError):
    """An epoch cannot be closed or published as asked; the scheduler logs it and retries the same
    epoch (never skips it)."""


class EpochNotClosedError(EpochError):
    """The epoch has no stored result yet: close it first."""


class NoChainError(EpochError):
    """Publishing was asked of an `Epochs` built without a chain."""


class NoRewardsKeyError(EpochError, SettingsError):
    """Publishing needs the REWARDS_ROLE key (DEPIN_REWARDS_KEY_FILE) and none is configured."""


class RootMismatchError(EpochError, ChainError):
    """The chain holds another root for the epoch: an operator must look, never a second publish."""


class PublishRevertedError(EpochError, ChainError):
    """The publish transaction was mined and reverted; the next attempt signs a new one."""


# The contract's refusals that no retry of the same epoch can get past (a stale or vetoed epoch number,
# a cap, a missing role): the epoch is marked 'refused' and the scheduler moves on; the next epoch's
# cumulative root carries its amounts. Others (EpochNotEnded, ChallengeWindowOpen) pass with time.
REFUSALS = frozenset(
    {
        "EpochNotAfterLatest",
        "CumulativeCapExceeded",
        "EpochCapExceeded",
        "TotalBelowAccepted",
        "ERC20ExceededCap",
        "AccessControlUnauthorizedAccount",
    }
)


class NonceLostTwiceError(EpochError, ChainError):
    """A re-signed publish lost its nonce as well; the scheduler tries again later."""


class PublishedEventMissingError(EpochError, ChainError):
    """The epoch has a root on chain but no EpochPublished event was found to name its transaction."""


@dataclass(frozen=True, slots=True)
class EpochConfig(ScoringConfig):
    """The scoring settings (ingest/scoring.py) and the scheduler's."""

    grace_ms: int = 5_000
    # A published epoch is settled once its receipt is this many blocks deep and still in the same block
    # (DEPIN_CHAIN_CONFIRMATIONS; 0: at the scheduler's next turn after the receipt, re-checked once).
    confirmations: int = 0
    rollup_interval_s: float = 10.0  # the epochs part also refreshes the hourly rollups (ingest/rollups.py)


class Epochs:
    """`chain`: the RewardDistributor seen through `ingest.seams.PublishChain`; a `DistributorClient`
    is wrapped in `DistributorChain`, tests pass an in-memory chain. None: epochs are only closed."""

    def __init__(
        self,
        store: EpochStore,
        chain: PublishChain | DistributorClient | None,
        config: EpochConfig,
        *,
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
        receipt_timeout_s: float = 120.0,
        receipt_poll_s: float = 1.0,
        taken_confirm_s: float = 3.0,
    ) -> None:
        self.store = store
        self.chain: PublishChain | None = (
            DistributorChain(chain) if isinstance(chain, DistributorClient) else chain
        )
        self.config = config
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.receipt_timeout_s = receipt_timeout_s
        self.receipt_poll_s = receipt_poll_s
        self.taken_confirm_s = taken_confirm_s
        # For readiness (ingest/core/readiness.py) and metrics: did the last attempt fail, with what,
        # and since when (monotonic) has the epoch to close or publish next been due.
        self.failing = False
        self.last_error: str | None = None
        self.due_since: float | None = None
        self._due_epoch: int | None = None
        # A refusal is not retried, so no failing attempt would show it: it stays reported as failing
        # until an epoch is published again.
        self._refusal: str | None = None
        self.last_close_parts: Parts | None = None  # the last close's parts: time, peak memory (bench)

    def params(self) -> RewardParams:
        return self.config.params()

    async def close(self, epoch: int) -> EpochRow:
        """Seal the epoch, score it from stored readings and save the manifest (once; later calls
        return it). Sealing first refuses new packets for it (`epoch_closed`) and waits for the batches
        in flight, so the coverage counts every batch committed before the seal and none after.
        Sealing is up to the epoch's end, so close epochs in order (the scheduler does)."""
        existing = await self.store.get_epoch(epoch)
        if existing is not None:
            return existing
        start_ms, end_ms = epoch_bounds(epoch, self.config.genesis_ms, self.config.length_ms)
        parts = self.last_close_parts = Parts()
        with parts("seal"):
            await self.store.seal_epoch(epoch, end_ms)
        scored = await score_epoch(self.store, self.config, epoch, parts)
        _fault_point("scored")
        split, digest, root = scored.split, scored.digest, scored.root
        # The manifest is stored as its header and the reward rows (migration 019): the whole document
        # is never built here. The stored row (with the header) comes back from the save.
        with parts("save"):
            row = await self.store.save_epoch_result(
                epoch,
                start_ms,
                end_ms,
                scored.params.emission,
                split.allocated,
                split.unissued,
                root,
                digest,
                scored.header,
                scored.device_rows,
                scored.owner_rows,
                scored.cell_rows,
                scored.payouts,
            )
        _fault_point("manifest")
        log.debug("epoch %d close: %s", epoch, parts)
        if row.inputs_digest == digest:  # not a concurrent closer's result
            metrics.EPOCHS_CLOSED.inc()
            log.info(
                "epoch %d closed: %d cells, %d devices, allocated %d, root 0x%s",
                epoch,
                split.cells,
                len(scored.device_rows),
                split.allocated,
                root.hex(),
            )
        return row

    async def publish(self, epoch: int, *, again: bool = False) -> EpochRow:
        """Put the epoch's root on chain exactly once; resumes a journaled transaction after a crash.
        A journaled tx whose nonce another transaction used is dropped and re-signed (`_nonce_taken`)."""
        chain = self._chain()
        row = await self._row(epoch)
        if row.status in ("published", "settled", "refused", "vetoed"):
            return row
        root = row.root
        if root == ZERO_ROOT:
            # Nobody has ever earned: no tree to commit to (the contract refuses a zero root). An empty
            # epoch AFTER a paid one is not this case: its tree is the unchanged cumulative one, and it
            # is published with the previous root and the same cumulative total (the contract mints
            # nothing).
            await self.store.settle_without_tx(epoch)
            log.info("epoch %d settled without a transaction: nobody has earned yet", epoch)
            return await self._row(epoch)
        if chain.address is None:
            raise NoRewardsKeyError("no key holding REWARDS_ROLE configured (DEPIN_REWARDS_KEY_FILE)")
        # The contract takes the cumulative total of the tree's leaves and mints the difference.
        total = sum((await self.store.cumulative_by_owner(epoch + 1)).values())
        journal = row.journal
        if journal is None:
            adopted = await self._adopt_if_on_chain(epoch, root, row)
            if adopted is not None:
                return adopted
            try:  # the signer simulates first: a refusal is seen here, before a nonce is spent
                journal = await chain.sign_publish(epoch, root, total)
            except ChainError as exc:
                if exc.error_name in REFUSALS:
                    return await self._refused(epoch, exc)
                raise
            await self.store.journal_tx(epoch, *journal)  # before it can reach the chain: 'signed'
            _fault_point("signed")
        raw, tx_hash, nonce = journal
        taken = False
        try:
            await chain.broadcast(raw)
        except NonceTooLowError:
            taken = True  # the node has another tx at this nonce and does not know ours
        except Exception as exc:  # already known / already mined after a crash: the receipt decides
            log.info("rebroadcast of epoch %d tx: %s", epoch, exc)
        _fault_point("broadcast")
        receipt = None if taken else await self._receipt(tx_hash, nonce)
        _fault_point("receipt")
        if receipt is None:
            return await self._nonce_taken(epoch, tx_hash, nonce, again)
        if receipt["status"] != 1:
            # Mined and reverted: its nonce is spent and it changed nothing, so the next attempt signs
            # a new transaction (rebroadcasting this one would only find the same revert).
            await self.store.clear_journal(epoch, tx_hash)
            why = await chain.revert_reason(epoch, root, total)
            if why is not None and why.error_name in REFUSALS:
                return await self._refused(epoch, why)
            raise PublishRevertedError(
                f"publishEpoch({epoch}) reverted in tx 0x{tx_hash.hex()}" + (f": {why}" if why else "")
            )
        await self.store.mark_published(epoch, tx_hash, receipt["blockNumber"], _block_hash(receipt))
        metrics.EPOCHS_PUBLISHED.inc()
        self._refusal = None
        log.info(
            "epoch %d published: root 0x%s, allocated %s, cumulative total %s, tx 0x%s, block %d",
            epoch,
            root.hex(),
            row.allocated,
            total,
            tx_hash.hex(),
            receipt["blockNumber"],
        )
        return await self._row(epoch)

    async def _refused(self, epoch: int, exc: ChainError) -> EpochRow:
        """Mark the epoch 'refused' (journal cleared) and alert: retrying could never succeed."""
        await self.store.mark_refused(epoch, str(exc)[:300])
        metrics.EPOCHS_REFUSED.inc()
        self._refusal = f"publishing epoch {epoch} refused: {exc}"[:300]
        self._set_failing(self._refusal)
        log.error(
            "ALERT epoch %d: the contract refused its publish for good (%s); marked 'refused' and not "
            "retried (the next epoch's cumulative root carries its amounts): an operator must look",
            epoch,
            exc,
        )
        return await self._row(epoch)

    async def _adopt_if_on_chain(self, epoch: int, root: bytes, row: EpochRow) -> EpochRow | None:
        """Before signing: if the epoch already has a root on chain (a database restored from a backup,
        or our journaled tx lost its nonce to a tx that published the same epoch), adopt it when it is
        our root; a different root needs an operator, never a second tx."""
        on_chain = await self._chain().root_of(epoch)
        if on_chain == ZERO_ROOT:
            return None
        if on_chain != root:
            raise RootMismatchError(
                f"epoch {epoch} is already on chain with root 0x{on_chain.hex()}, "
                f"not the stored 0x{root.hex()}"
            )
        tx_hash, block = await self._published_tx(epoch)
        await self.store.mark_published(epoch, tx_hash, block)
        self._refusal = None
        log.info(
            "epoch %d published: root 0x%s, total %s, tx 0x%s, block %d (found on chain)",
            epoch,
            root.hex(),
            row.allocated,
            tx_hash.hex(),
            block,
        )
        return await self._row(epoch)

    async def _receipt(self, tx_hash: bytes, nonce: int | None) -> Any | None:
        """The journaled tx's receipt; None once its nonce is used by another transaction (the account's
        mined nonce is past it and the tx is not mined). TimeoutError after `receipt_timeout_s`
        without either: the next attempt rebroadcasts the same bytes."""
        chain = self._chain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.receipt_timeout_s
        while True:
            receipt = await chain.receipt(tx_hash)
            if receipt is not None:
                return receipt
            if nonce is not None and await chain.mined_nonce() > nonce:
                # Ours may have been mined between the two reads, and a node (anvil under load, an RPC
                # behind a load balancer) can count a mined nonce before it serves the receipt: only a
                # receipt still missing after `taken_confirm_s` means another tx used the nonce.
                return await self._receipt_within(tx_hash, self.taken_confirm_s)
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"no receipt for publish tx 0x{tx_hash.hex()} (nonce {nonce}) after "
                    f"{self.receipt_timeout_s:g} s; rebroadcasting at the next attempt"
                )
            await asyncio.sleep(self.receipt_poll_s)

    async def _receipt_within(self, tx_hash: bytes, seconds: float) -> Any | None:
        chain = self._chain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            receipt = await chain.receipt(tx_hash)
            if receipt is not None or loop.time() >= deadline:
                return receipt
            await asyncio.sleep(min(self.receipt_poll_s, 0.25))

    async def _nonce_taken(self, epoch: int, tx_hash: bytes, nonce: int | None, again: bool) -> EpochRow:
        """The journaled tx can never be mined: another tx from this account used its nonce. Drop it
        and sign a new one at a fresh nonce (safe: the contract refuses a second publish of an epoch,
        and if the other tx published this epoch with our root, it is adopted instead)."""
        chain = self._chain()
        metrics.EPOCH_NONCE_TAKEN.inc()
        log.error(
            "epoch %d: publish tx 0x%s can never be mined: nonce %s of %s was used by another "
            "transaction (another process or wallet using the rewards key?); dropping it and re-signing "
            "at a fresh nonce",
            epoch,
            tx_hash.hex(),
            nonce,
            chain.address or "?",
        )
        await self.store.clear_journal(epoch, tx_hash)
        await chain.resync_nonce()
        if again:
            raise NonceLostTwiceError(f"epoch {epoch}: a second publish tx lost its nonce too; retry later")
        return await self.publish(epoch, again=True)

    def _chain(self) -> PublishChain:
        if self.chain is None:
            raise NoChainError("no chain configured: cannot publish")
        return self.chain

    async def _published_tx(self, epoch: int) -> tuple[bytes, int]:
        """The tx hash and block of the epoch's EpochPublished event."""
        found = await self._chain().published_tx(epoch)
        if found is None:
            raise PublishedEventMissingError(
                f"epoch {epoch} has a root on chain but no EpochPublished event was found"
            )
        return found

    async def _row(self, epoch: int) -> EpochRow:
        row = await self.store.get_epoch(epoch)
        if row is None:
            raise EpochNotClosedError(f"epoch {epoch} is not closed")
        return row

    async def settle(self) -> int:
        """Re-check every published epoch's receipt: settle it once `confirmations` blocks are past its
        block and the receipt is still there (same block hash); follow a reorg that moved it; put an
        epoch whose tx a reorg dropped back to 'signed' (the scheduler then rebroadcasts the journaled
        bytes; the contract refuses a second publish of the epoch, so this is safe). Returns how many
        published epochs are still waiting to settle."""
        chain = self._chain()
        waiting = 0
        rows = await self.store.unsettled()
        if not rows:
            return 0
        head = await chain.head()
        for row in rows:
            if row.tx_hash is None:  # not possible for 'published'; never settle blind
                waiting += 1
                continue
            receipt = await chain.receipt(row.tx_hash)
            if receipt is None and await chain.root_of(row.epoch) == row.root:
                # Our root is on chain, so the epoch was not dropped: a node that lags behind the one
                # that served the receipt, or another tx of ours published it (adopt that one).
                found = await chain.published_tx(row.epoch)
                if found is not None and found[0] != row.tx_hash:
                    await self.store.mark_published(row.epoch, found[0], found[1])
                waiting += 1
                continue
            if receipt is None or receipt["status"] != 1:
                await self._dropped(row, reverted=receipt is not None)
                continue
            block, block_hash = int(receipt["blockNumber"]), _block_hash(receipt)
            if (block, block_hash) != (row.block_number, row.block_hash) and row.block_hash is not None:
                metrics.EPOCH_REORGED.labels("moved").inc()
                log.warning(
                    "epoch %d: a reorg moved its publish tx 0x%s from block %s to block %d; "
                    "settling counts from there",
                    row.epoch,
                    row.tx_hash.hex(),
                    row.block_number,
                    block,
                )
                await self.store.mark_published(row.epoch, row.tx_hash, block, block_hash)
                waiting += 1
                continue
            if head - block < self.config.confirmations:
                if row.block_hash is None and block_hash is not None:
                    await self.store.mark_published(row.epoch, row.tx_hash, block, block_hash)
                waiting += 1
                continue
            if await self.store.mark_settled(row.epoch, block_hash):
                metrics.EPOCHS_SETTLED.inc()
                log.info(
                    "epoch %d settled: tx 0x%s in block %d, %d confirmation(s) (head %d)",
                    row.epoch,
                    row.tx_hash.hex(),
                    block,
                    head - block,
                    head,
                )
        return waiting

    async def _dropped(self, row: EpochRow, *, reverted: bool) -> None:
        """A receipt seen before is gone (a reorg dropped the tx) or now reverts (re-included after
        another publish of the epoch): back to 'signed', or to 'closed' when a new tx must be signed."""
        assert row.tx_hash is not None
        metrics.EPOCH_REORGED.labels("reverted" if reverted else "dropped").inc()
        await self.store.unpublish(row.epoch, row.tx_hash, reverted=reverted)
        log.error(
            "epoch %d: its publish tx 0x%s (block %s) %s after its receipt was seen: a reorg; %s",
            row.epoch,
            row.tx_hash.hex(),
            row.block_number,
            "reverts" if reverted else "is no longer on chain",
            "a new tx will be signed"
            if reverted or row.raw_tx is None
            else "rebroadcasting the journaled transaction",
        )

    async def close_and_publish(self, epoch: int) -> EpochRow:
        await self.close(epoch)
        return await self.publish(epoch)

    @property
    def can_publish(self) -> bool:
        """False without a key for REWARDS_ROLE: epochs are then closed (manifests, proofs) but not
        published; once a key is configured they are published oldest first."""
        return self.chain is not None and self.chain.address is not None

    async def next_step(self, now_ms: int, *, settling: bool = False) -> Step:
        """Read what the decision needs from the store and take it (`ingest.core.schedule`).
        `settling`: a published epoch waits to settle (the wait is capped to look again soon)."""
        last, unpublished = await self.store.epoch_progress()
        if not self.can_publish:
            unpublished = None  # nothing to finish: keep closing
        earliest = None if last is not None else await self.store.earliest_reading_ms()
        c = self.config
        return next_step(
            last,
            unpublished,
            earliest,
            now_ms,
            c.genesis_ms,
            c.length_ms,
            c.grace_ms,
            settling=settling,
        )

    def _track_due(self, step: Step) -> None:
        """Since when the epoch the scheduler must act on has been due (cleared while it waits)."""
        if isinstance(step, Wait):
            self.due_since = self._due_epoch = None
        elif step.epoch != self._due_epoch:
            self._due_epoch, self.due_since = step.epoch, time.monotonic()
        metrics.EPOCH_DUE_SECONDS.set(0 if self.due_since is None else time.monotonic() - self.due_since)

    def vetoed(self, epoch: int) -> None:
        """The distributor mirror saw GUARDIAN_ROLE veto the epoch's root: reported as failing (readiness,
        like a refusal) until an epoch is published again."""
        self._refusal = f"epoch {epoch}'s root was vetoed by GUARDIAN_ROLE"
        self._set_failing(self._refusal)

    def _set_failing(self, error: str | None) -> None:
        self.failing = error is not None or self._refusal is not None
        metrics.EPOCH_FAILING.set(int(self.failing))
        if error is not None:  # a latched refusal keeps its own time as the last error's
            self.last_error = error
            metrics.EPOCH_LAST_ERROR.set(time.time())

    async def run(
        self,
        clock: Callable[[], int] = _now_ms,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """Close and publish every due epoch, in order, each once; forever (cancel to stop).

        `clock` gives the time in ms and `sleep` waits seconds: tests pass a fake clock whose sleep
        advances it."""
        c = self.config
        failures = 0
        standing_by = False
        while True:
            doing = "deciding the next epoch"
            try:
                # Decide and act under the scheduler lock: a second process running this part stands
                # by instead of closing or signing the same epoch concurrently.
                async with self.store.scheduler_turn() as mine:
                    if mine:
                        if standing_by:
                            log.info("epoch scheduler: the lock is free again; taking over")
                        standing_by = False
                        settling, settle_error = False, None
                        if self.chain is not None:
                            try:
                                settling = await self.settle() > 0
                            except Exception as exc:  # the RPC away: closing (database only) goes on
                                settling, settle_error = True, exc
                        step = await self.next_step(clock(), settling=settling)
                        self._track_due(step)
                        if isinstance(step, Close):
                            doing = f"closing epoch {step.epoch}"
                            await self.close(step.epoch)
                        if isinstance(step, Publish) or (isinstance(step, Close) and self.can_publish):
                            doing = f"publishing epoch {step.epoch}"
                            await self.publish(step.epoch)
                        if settle_error is not None:
                            doing = "settling published epochs"
                            raise settle_error
                    else:
                        if not standing_by:
                            log.info("epoch scheduler: another process holds the lock; standing by")
                        standing_by = True
                        step = Wait(min(IDLE_POLL_MS, c.length_ms))
                failures = 0
                self._set_failing(None)
                if isinstance(step, Wait):
                    await sleep(step.ms / 1000)  # outside the turn: the lock is not held while idle
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Never skipped: nothing was stored as done, so the next decision is the same epoch.
                failures += 1
                metrics.EPOCH_ERRORS.inc()
                self._set_failing(f"{doing} failed: {type(exc).__name__}: {exc}"[:300])
                delay = min(self.retry_min_s * 2 ** min(failures - 1, 30), self.retry_max_s)
                # The traceback once per streak; then one line per retry.
                log.error(
                    "%s failed (attempt %d): %s; retrying in %.1f s",
                    doing,
                    failures,
                    exc,
                    delay,
                    exc_info=failures == 1,
                )
                await sleep(delay)
