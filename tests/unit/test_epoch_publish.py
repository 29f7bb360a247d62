"""The epoch publisher's journal → broadcast → receipt sequence (`Epochs.publish`), on an in-memory
chain behind `ingest.seams.PublishChain` and an in-memory journal: the signed transaction is journaled
before it is broadcast; after a crash the same bytes are rebroadcast, never re-signed; a root already
on chain is adopted without sending; a transaction whose nonce another one took is dropped and
re-signed; a revert clears the journal. Every failure is one of ingest/epochs.py's `EpochError`s.

tests/integration/test_epochs.py proves the same against anvil and PostgreSQL (a killed process, a
stolen nonce, a restored database); these pin the order of the steps in milliseconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, cast

import pytest

from devices.errors import ChainError, DepinError, NonceTooLowError
from ingest.adapters.store.rows import EpochRow
from ingest.epochs import (
    EpochConfig,
    EpochNotClosedError,
    Epochs,
    NoChainError,
    NonceLostTwiceError,
    NoRewardsKeyError,
    PublishRevertedError,
    RootMismatchError,
)

ROOT = bytes(range(1, 33))
OTHER_ROOT = b"\x07" * 32
CONFIG = EpochConfig(genesis_ms=0, length_ms=60_000, emission=1000)


class Crash(BaseException):
    """The process dies at this step (what the test then restarts from is the journal); a
    BaseException, so no `except Exception` of the code under test can absorb it."""


@dataclass
class Journal:
    """The epochs table as `Epochs.publish` uses it; `log` is shared with the chain, so a test reads
    the order of the steps across both."""

    log: list[str]
    rows: dict[int, EpochRow] = field(default_factory=dict)

    def closed(self, epoch: int, root: bytes = ROOT, allocated: int = 500) -> None:
        self.rows[epoch] = EpochRow(
            epoch=epoch,
            start_ms=0,
            end_ms=60_000,
            status="closed",
            emission=1000,
            allocated=allocated,
            unissued=1000 - allocated,
            root=root,
            inputs_digest=b"\x00" * 32,
            manifest={},
            tx_hash=None,
            raw_tx=None,
            tx_nonce=None,
            block_number=None,
            closed_ms=60_000,
            published_ms=None,
        )

    def _update(self, epoch: int, **changes: Any) -> None:
        self.rows[epoch] = replace(self.rows[epoch], **changes)

    async def get_epoch(self, epoch: int) -> EpochRow | None:
        return self.rows.get(epoch)

    async def journal_tx(self, epoch: int, raw_tx: bytes, tx_hash: bytes, nonce: int) -> bool:
        self.log.append(f"journal nonce {nonce}")
        self._update(epoch, status="signed", raw_tx=raw_tx, tx_hash=tx_hash, tx_nonce=nonce)
        return True

    async def clear_journal(self, epoch: int, tx_hash: bytes) -> bool:
        self.log.append("clear journal")
        self._update(epoch, status="closed", raw_tx=None, tx_hash=None, tx_nonce=None)
        return True

    async def mark_published(
        self, epoch: int, tx_hash: bytes, block: int, block_hash: bytes | None = None
    ) -> bool:
        self.log.append(f"published in block {block}")
        self._update(epoch, status="published", tx_hash=tx_hash, block_number=block, block_hash=block_hash)
        return True

    async def unpublish(self, epoch: int, tx_hash: bytes, *, reverted: bool = False) -> bool:
        row = self.rows[epoch]
        again = "closed" if reverted or row.raw_tx is None else "signed"
        self.log.append(f"back to {again}")
        changes: dict[str, Any] = {"status": again, "block_number": None, "block_hash": None}
        if again == "closed":
            changes.update(raw_tx=None, tx_hash=None, tx_nonce=None)
        self._update(epoch, **changes)
        return True

    async def mark_settled(self, epoch: int, block_hash: bytes | None = None) -> bool:
        row = self.rows[epoch]
        if row.status != "published" or (block_hash and row.block_hash and block_hash != row.block_hash):
            return False
        self.log.append(f"settled in block {row.block_number}")
        self._update(epoch, status="settled")
        return True

    async def unsettled(self) -> list[EpochRow]:
        return [r for _, r in sorted(self.rows.items()) if r.status == "published"]

    async def mark_refused(self, epoch: int, reason: str) -> bool:
        self.log.append(f"refused: {reason}")
        self._update(epoch, status="refused", raw_tx=None, tx_hash=None, tx_nonce=None)
        return True

    async def cumulative_by_owner(self, before_epoch: int) -> dict[str, int]:
        # One owner holding everything allocated so far: the cumulative total is their sum.
        return {"0xOwner": sum(r.allocated for n, r in self.rows.items() if n < before_epoch)}

    async def settle_without_tx(self, epoch: int) -> bool:
        self.log.append("settled")
        self._update(epoch, status="settled")
        return True


@dataclass
class Chain:
    """One account on a chain that mines a broadcast transaction at once unless told otherwise."""

    log: list[str]
    address: str | None = "0xRewards"
    roots: dict[int, bytes] = field(default_factory=dict)
    mined: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # tx hash → receipt
    events: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # epoch → (tx hash, block)
    next_nonce: int = 0  # the account's nonce as the signer tracks it
    used_nonces: set[int] = field(default_factory=set)  # nonces of mined transactions (ours or not)
    broadcasts: list[bytes] = field(default_factory=list)
    block: int = 100
    revert: bool = False
    refuse: str | None = None  # the contract's error for every publish (seen at the estimate and replay)
    refuse_at_sign: bool = True  # False: the estimate passed, the mined tx reverts with `refuse`
    mine: bool = True  # False: the node accepts a broadcast but never mines it
    crash_on: str | None = None  # "broadcast" or "receipt": the process dies there, once
    receipt_lag: int = 0  # receipt reads that miss a mined tx (the nonce already counts it)
    stolen: bool = False  # another wallet takes each nonce right after we sign at it
    pending: dict[bytes, tuple[int, int, bytes]] = field(default_factory=dict)  # raw → (epoch, nonce, root)
    totals: list[int] = field(default_factory=list)  # the total of each publish signed

    async def revert_reason(self, epoch: int, root: bytes, total: int) -> ChainError | None:
        return ChainError(f"{self.refuse}(...)", error_name=self.refuse) if self.refuse else None

    async def root_of(self, epoch: int) -> bytes:
        return self.roots.get(epoch, b"\x00" * 32)

    async def sign_publish(self, epoch: int, root: bytes, total: int) -> tuple[bytes, bytes, int]:
        self.totals.append(total)
        if self.refuse and self.refuse_at_sign:
            raise ChainError(f"publishEpoch reverted: {self.refuse}(...)", error_name=self.refuse)
        nonce, self.next_nonce = self.next_nonce, self.next_nonce + 1
        raw = b"publishEpoch(%d,%s,%d) nonce %d" % (epoch, root.hex().encode(), total, nonce)
        self.pending[raw] = (epoch, nonce, root)
        self.log.append(f"sign nonce {nonce}")
        if self.stolen:
            self.used_nonces.add(nonce)
        return raw, hashlib.sha256(raw).digest(), nonce

    async def broadcast(self, raw: bytes) -> None:
        self.log.append("broadcast")
        self.broadcasts.append(raw)
        self._crash("broadcast")
        epoch, nonce, root = self.pending[raw]
        tx_hash = hashlib.sha256(raw).digest()
        if tx_hash in self.mined:
            raise ValueError("already known")  # a rebroadcast after a crash: the receipt decides
        if nonce in self.used_nonces:
            raise NonceTooLowError(f"nonce too low: {nonce}")
        if self.mine:
            self.used_nonces.add(nonce)
            self.block += 1
            status = 0 if self.revert or self.refuse or epoch in self.roots else 1
            if status:
                self.roots[epoch] = root
                self.events[epoch] = (tx_hash, self.block)
            self.mined[tx_hash] = {
                "status": status,
                "blockNumber": self.block,
                "blockHash": self.block.to_bytes(32, "big"),
            }

    async def receipt(self, tx_hash: bytes) -> dict[str, Any] | None:
        self._crash("receipt")
        if self.receipt_lag > 0 and tx_hash in self.mined:
            self.receipt_lag -= 1  # the node counts the nonce as mined but has no receipt yet
            return None
        return self.mined.get(tx_hash)

    async def head(self) -> int:
        return self.block

    async def mined_nonce(self) -> int:
        return max(self.used_nonces, default=-1) + 1

    async def resync_nonce(self) -> None:
        self.log.append("resync nonce")
        self.next_nonce = await self.mined_nonce()

    async def published_tx(self, epoch: int) -> tuple[bytes, int] | None:
        return self.events.get(epoch)

    def _crash(self, step: str) -> None:
        if self.crash_on == step:
            self.crash_on = None
            self.log.append(f"crash at {step}")
            raise Crash(step)


def world(**chain: Any) -> tuple[Journal, Chain, list[str]]:
    log: list[str] = []
    journal = Journal(log)
    journal.closed(1)
    return journal, Chain(log, **chain), log


def publisher(journal: Journal, chain: Chain | None) -> Epochs:
    """What a (re)started process builds on the same journal."""
    return Epochs(
        cast(Any, journal), chain, CONFIG, receipt_timeout_s=0.05, receipt_poll_s=0.001, taken_confirm_s=0.05
    )


async def test_a_receipt_that_lags_its_mined_nonce_is_waited_for_not_taken_for_a_lost_nonce() -> None:
    journal, chain, log = world(receipt_lag=5)
    row = await publisher(journal, chain).publish(1)
    assert row.status == "published" and len(chain.broadcasts) == 1
    assert not any(e.startswith("resync") for e in log) and log.count("sign nonce 0") == 1


async def test_the_transaction_is_journaled_before_it_is_broadcast() -> None:
    journal, chain, log = world()
    row = await publisher(journal, chain).publish(1)
    assert log == ["sign nonce 0", "journal nonce 0", "broadcast", "published in block 101"]
    assert row.status == "published" and chain.roots[1] == ROOT
    assert row.tx_hash == hashlib.sha256(chain.broadcasts[0]).digest()


@pytest.mark.parametrize("step", ["broadcast", "receipt"])
async def test_after_a_crash_the_same_bytes_are_rebroadcast(step: str) -> None:
    """Crash before the node got it ("broadcast") or after it was mined ("receipt"): the restarted
    publisher sends the journaled bytes again, signs nothing, and the receipt decides."""
    journal, chain, log = world(crash_on=step)
    with pytest.raises(Crash):
        await publisher(journal, chain).publish(1)
    assert journal.rows[1].raw_tx is not None and journal.rows[1].status == "signed"
    row = await publisher(journal, chain).publish(1)
    assert row.status == "published"
    assert log.count("sign nonce 0") == 1 and not any(e.startswith("sign nonce 1") for e in log)
    assert chain.broadcasts[0] == chain.broadcasts[1] and len(chain.broadcasts) == 2
    assert log.index("journal nonce 0") < log.index("broadcast")


async def test_a_root_found_on_chain_is_adopted_without_sending() -> None:
    """A database restored from a backup: the chain already has our root for the epoch."""
    journal, chain, log = world()
    chain.roots[1], chain.events[1] = ROOT, (b"\xaa" * 32, 42)
    row = await publisher(journal, chain).publish(1)
    assert row.status == "published" and row.tx_hash == b"\xaa" * 32 and row.block_number == 42
    assert chain.broadcasts == [] and log == ["published in block 42"]


async def test_another_root_on_chain_stops_for_an_operator() -> None:
    journal, chain, log = world()
    chain.roots[1] = OTHER_ROOT
    with pytest.raises(RootMismatchError, match="already on chain with root 0x0707"):
        await publisher(journal, chain).publish(1)
    assert log == [] and journal.rows[1].status == "closed"  # nothing signed, nothing sent


async def test_a_transaction_whose_nonce_was_taken_is_re_signed() -> None:
    """Another wallet used the rewards key's nonce 0 while our journaled tx waited: the node refuses
    the rebroadcast (nonce too low); the journal is cleared and a new tx signed at a fresh nonce."""
    journal, chain, log = world(crash_on="broadcast")
    with pytest.raises(Crash):
        await publisher(journal, chain).publish(1)
    chain.used_nonces.add(0)  # someone else's transaction, mined at our nonce
    row = await publisher(journal, chain).publish(1)
    assert row.status == "published"
    assert log == [
        "sign nonce 0",
        "journal nonce 0",
        "broadcast",
        "crash at broadcast",
        "broadcast",  # the journaled bytes, refused: nonce too low
        "clear journal",
        "resync nonce",
        "sign nonce 1",
        "journal nonce 1",
        "broadcast",
        "published in block 101",
    ]
    assert chain.broadcasts[0] == chain.broadcasts[1] != chain.broadcasts[2]


async def test_a_never_mined_transaction_whose_nonce_moved_on_is_re_signed() -> None:
    """The node accepted our tx but it was replaced (same nonce, another tx mined): no receipt ever
    comes and the account's mined nonce is past ours, so waiting longer is pointless."""
    journal, chain, log = world(mine=False)
    epochs = publisher(journal, chain)
    original = chain.broadcast

    async def replaced_then_mined(raw: bytes) -> None:
        if len(chain.broadcasts) == 0:
            chain.used_nonces.add(0)  # a replacement at nonce 0 is mined instead of ours
            chain.broadcasts.append(raw)
            return
        chain.mine = True
        await original(raw)

    chain.broadcast = replaced_then_mined  # type: ignore[method-assign]
    row = await epochs.publish(1)
    assert row.status == "published"
    assert [e for e in log if e.startswith(("sign", "clear"))] == [
        "sign nonce 0",
        "clear journal",
        "sign nonce 1",
    ]


async def test_a_second_lost_nonce_is_an_error_for_the_scheduler_to_retry() -> None:
    journal, chain, log = world(stolen=True)
    with pytest.raises(NonceLostTwiceError, match="epoch 1: a second publish tx lost its nonce too"):
        await publisher(journal, chain).publish(1)
    assert [e for e in log if e.startswith("sign")] == ["sign nonce 0", "sign nonce 1"]
    assert journal.rows[1].raw_tx is None and journal.rows[1].status == "closed"


async def test_a_reverted_publish_clears_the_journal() -> None:
    journal, chain, log = world(revert=True)
    with pytest.raises(PublishRevertedError, match=r"publishEpoch\(1\) reverted"):
        await publisher(journal, chain).publish(1)
    assert journal.rows[1].raw_tx is None and log[-1] == "clear journal"
    chain.revert = False
    assert (await publisher(journal, chain).publish(1)).status == "published"  # a new tx, nonce 1
    assert "sign nonce 1" in log


async def test_nothing_to_commit_to_settles_without_a_transaction() -> None:
    journal, chain, log = world()
    journal.closed(1, root=b"\x00" * 32, allocated=0)
    assert (await publisher(journal, chain).publish(1)).status == "settled"
    assert log == ["settled"] and chain.broadcasts == []


async def test_what_cannot_be_published_is_a_depin_error() -> None:
    journal, chain, _ = world(address=None)
    with pytest.raises(NoRewardsKeyError, match="DEPIN_REWARDS_KEY_FILE"):
        await publisher(journal, chain).publish(1)
    with pytest.raises(NoChainError):
        await publisher(journal, None).publish(1)
    with pytest.raises(EpochNotClosedError, match="epoch 2 is not closed"):
        await publisher(journal, Chain([])).publish(2)
    for error in (NoRewardsKeyError, NoChainError, EpochNotClosedError, RootMismatchError):
        assert issubclass(error, DepinError)
    assert not publisher(journal, chain).can_publish and publisher(journal, Chain([])).can_publish


async def test_the_publish_carries_the_cumulative_total() -> None:
    journal, chain, _ = world()
    journal.closed(2, allocated=300)
    await publisher(journal, chain).publish(1)
    await publisher(journal, chain).publish(2)
    assert chain.totals == [500, 800]  # the contract mints only the difference


@pytest.mark.parametrize("at_sign", [True, False])
async def test_a_refusal_marks_the_epoch_refused_and_is_not_retried(at_sign: bool) -> None:
    """Refused at the estimate (no nonce spent) or mined and reverted (the replay names the error):
    either way the epoch is final as 'refused', the journal is empty, and a second call sends nothing."""
    journal, chain, log = world(refuse="EpochNotAfterLatest", refuse_at_sign=at_sign)
    epochs = publisher(journal, chain)
    row = await epochs.publish(1)
    assert row.status == "refused" and row.raw_tx is None
    assert epochs.failing and "publishing epoch 1 refused" in (epochs.last_error or "")
    assert log[-1].startswith("refused: ") and "EpochNotAfterLatest" in log[-1]
    sent = len(chain.broadcasts)
    assert sent == (0 if at_sign else 1)
    assert (await publisher(journal, chain).publish(1)).status == "refused"
    assert len(chain.broadcasts) == sent
    # Reported as failing (readiness) until a later epoch is published.
    chain.refuse = None
    journal.closed(2)
    assert (await epochs.publish(2)).status == "published"
    epochs._set_failing(None)  # what the scheduler does after a successful step
    assert not epochs.failing


async def test_a_refusal_that_time_lifts_is_an_error_for_the_scheduler_to_retry() -> None:
    journal, chain, _ = world(refuse="ChallengeWindowOpen")
    with pytest.raises(ChainError, match="ChallengeWindowOpen"):
        await publisher(journal, chain).publish(1)
    assert journal.rows[1].status == "closed"


def settler(journal: Journal, chain: Chain, confirmations: int) -> Epochs:
    return Epochs(
        cast(Any, journal),
        chain,
        replace(CONFIG, confirmations=confirmations),
        receipt_timeout_s=0.05,
        receipt_poll_s=0.001,
        taken_confirm_s=0.05,
    )


async def test_a_published_epoch_settles_once_its_receipt_is_deep_enough_and_still_there() -> None:
    journal, chain, log = world()
    epochs = settler(journal, chain, confirmations=3)
    await epochs.publish(1)
    assert journal.rows[1].block_hash == (101).to_bytes(32, "big")
    assert await epochs.settle() == 1 and journal.rows[1].status == "published"
    chain.block += 2  # two blocks past the receipt's
    assert await epochs.settle() == 1 and journal.rows[1].status == "published"
    chain.block += 1
    assert await epochs.settle() == 0 and journal.rows[1].status == "settled"
    assert log[-1] == "settled in block 101" and len(chain.broadcasts) == 1


async def test_with_no_confirmations_it_settles_at_the_next_look() -> None:
    journal, chain, _ = world()
    epochs = settler(journal, chain, confirmations=0)
    assert (await epochs.publish(1)).status == "published"
    assert await epochs.settle() == 0 and journal.rows[1].status == "settled"


async def test_a_reorg_that_drops_the_publish_goes_back_to_signed_and_rebroadcasts_the_same_bytes() -> None:
    journal, chain, log = world()
    epochs = settler(journal, chain, confirmations=2)
    await epochs.publish(1)
    # The block holding it is replaced by one without it: no receipt, no root, the nonce free again.
    tx_hash = journal.rows[1].tx_hash
    assert tx_hash is not None
    del chain.mined[tx_hash]
    del chain.roots[1], chain.events[1]
    chain.used_nonces.discard(0)
    assert await epochs.settle() == 0
    row = journal.rows[1]
    assert row.status == "signed" and row.raw_tx is not None and row.block_number is None
    assert (await epochs.publish(1)).status == "published"  # the scheduler's next step
    assert log.count("sign nonce 0") == 1 and not any(e.startswith("sign nonce 1") for e in log)
    assert chain.broadcasts[0] == chain.broadcasts[1] and chain.roots[1] == ROOT
    chain.block += 2
    assert await epochs.settle() == 0 and journal.rows[1].status == "settled"


async def test_a_reorg_that_moves_the_publish_restarts_the_count_from_its_new_block() -> None:
    journal, chain, _ = world()
    epochs = settler(journal, chain, confirmations=2)
    await epochs.publish(1)
    tx_hash = journal.rows[1].tx_hash
    assert tx_hash is not None
    chain.block = 103  # re-included two blocks later, in another block
    chain.mined[tx_hash] = {"status": 1, "blockNumber": 103, "blockHash": b"\x33" * 32}
    assert await epochs.settle() == 1
    assert (journal.rows[1].status, journal.rows[1].block_number) == ("published", 103)
    chain.block = 105
    assert await epochs.settle() == 0 and journal.rows[1].status == "settled"


async def test_a_publish_that_reverts_after_a_reorg_is_signed_again() -> None:
    journal, chain, log = world()
    epochs = settler(journal, chain, confirmations=5)
    await epochs.publish(1)
    tx_hash = journal.rows[1].tx_hash
    assert tx_hash is not None
    chain.mined[tx_hash] = {"status": 0, "blockNumber": 102, "blockHash": b"\x44" * 32}
    del chain.roots[1], chain.events[1]
    assert await epochs.settle() == 0
    assert journal.rows[1].status == "closed" and journal.rows[1].raw_tx is None
    assert (await epochs.publish(1)).status == "published" and "sign nonce 1" in log


async def test_a_receipt_missing_while_the_root_is_on_chain_is_not_taken_for_a_reorg() -> None:
    """A node behind the one that served the receipt (a load balancer): the root is on chain, so the
    publish was not dropped; the epoch keeps waiting, nothing is rebroadcast."""
    journal, chain, log = world()
    epochs = settler(journal, chain, confirmations=1)
    await epochs.publish(1)
    tx_hash = journal.rows[1].tx_hash
    assert tx_hash is not None
    receipt = chain.mined.pop(tx_hash)
    assert await epochs.settle() == 1 and journal.rows[1].status == "published"
    assert not any(e.startswith("back to") for e in log) and len(chain.broadcasts) == 1
    chain.mined[tx_hash] = receipt
    chain.block += 1
    assert await epochs.settle() == 0 and journal.rows[1].status == "settled"
