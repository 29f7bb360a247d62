"""The epoch scheduler (`Epochs.run`) driven by a FAKE CLOCK on a real PostgreSQL and a real anvil.

Readings are written straight into the store (the consumer is not the subject here); every `sleep`
of the scheduler advances the fake clock instead of waiting, so days of epochs run in a second.
Checked against the chain itself: which epochs have a root, how many EpochPublished events each has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3

from devices.chain.artifacts import REWARDS_ROLE
from devices.chain.deployment import Deployment
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from devices.errors import ChainError
from devices.protocol.model import DeviceRecord, Reading
from ingest.adapters.db import create_pool, migrate
from ingest.adapters.distributor import DistributorChain
from ingest.adapters.store.rows import EpochRow
from ingest.epochs import EpochConfig, Epochs
from ingest.model import AcceptedPacket
from tests.fixtures_pg import Store
from tests.procs import ConnectionHog, small_postgres

pytestmark = pytest.mark.integration

TOKEN = 10**18
L = 60_000  # epoch length (fake ms)
GRACE = 5_000
CELLS = (0x8928308280FFFFF, 0x8928308280BFFFF, 0x89283082807FFFF)


class Stop(BaseException):
    """Ends a run: not an Exception, so the scheduler's retry loop does not swallow it."""


@dataclass
class FakeClock:
    now: int
    stop_at: int = 0
    sleeps: list[float] = field(default_factory=list)
    before_sleep: Callable[[float], Awaitable[None]] | None = None

    def __call__(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.before_sleep is not None:
            await self.before_sleep(seconds)
        if self.now >= self.stop_at:
            raise Stop
        # Never past stop_at: what is due at stop_at is still done before the run stops.
        self.now = min(self.now + max(1, round(seconds * 1000)), self.stop_at)
        await asyncio.sleep(0)

    async def run_until(self, epochs: Epochs, stop_at: int) -> None:
        self.stop_at = stop_at
        with pytest.raises(Stop):
            await asyncio.wait_for(epochs.run(clock=self, sleep=self.sleep), 60)


def dev(n: int) -> bytes:
    return hashlib.sha256(b"sched-device" + bytes([n])).digest()


def packet(device: int, seq: int, ts: int) -> AcceptedPacket:
    readings = tuple(Reading(ts_ms=ts + i, lat=52.5, lon=13.4, vals={"t": 20.0 + i}) for i in range(3))
    digest = hashlib.sha256(dev(device) + seq.to_bytes(8, "big")).digest()
    return AcceptedPacket(
        device_id=dev(device),
        seq=seq,
        kind="weather",
        payload_digest=digest,
        received_ms=ts,
        readings=readings,
        cells=(CELLS[device % 3],) * 3,
        flags=(0, 0, 0),
        message_digest=hashlib.sha256(b"msg" + digest).digest(),
    )


@dataclass
class World:
    store: Store
    w3: AsyncWeb3[Any]
    deployment: Deployment
    distributor: DistributorClient
    config: EpochConfig
    genesis: int
    seq: int = 0

    def epochs(self, distributor: DistributorClient | None = None) -> Epochs:
        """A new scheduler on the same store: what a restarted process builds."""
        return Epochs(self.store, distributor or self.distributor, self.config)

    def end(self, n: int) -> int:
        return self.genesis + n * L

    async def readings_in(self, epoch: int, devices: tuple[int, ...] = (0, 1, 2)) -> None:
        pkts = []
        for d in devices:
            self.seq += 1
            pkts.append(packet(d, self.seq, self.genesis + (epoch - 1) * L + 1_000 + d))
        res = await self.store.write_batch(pkts, [])
        assert res.stored == len(pkts), res

    async def stored(self) -> dict[int, EpochRow]:
        rows = await self.store.pool.fetch("SELECT epoch FROM epochs ORDER BY epoch")
        out = {}
        for r in rows:
            e = await self.store.get_epoch(r["epoch"])
            assert e is not None
            out[r["epoch"]] = e
        return out

    async def published_on_chain(self) -> Counter[int]:
        """EpochPublished events per epoch, read from the chain's logs."""
        event = self.distributor.contract.events.EpochPublished()
        logs = await self.w3.eth.get_logs(
            {"address": self.deployment.distributor, "fromBlock": self.deployment.block, "toBlock": "latest"}
        )
        return Counter(
            int(event.process_log(lg)["args"]["epoch"])
            for lg in logs
            if bytes(lg["topics"][0]) == bytes(HexBytes(event.topic))
        )


@pytest.fixture
async def world(
    store: Store, w3: AsyncWeb3[Any], deployment: Deployment, signer: Signer, accounts: list[LocalAccount]
) -> World:
    await store.upsert_devices(
        [DeviceRecord(dev(d), b"k" * 32, accounts[2 + d].address, 1, 0, True, 10 + d) for d in range(3)],
        block=10,
    )
    # Real-time-ish timestamps (a few hours back) so the readings land in daily partitions.
    genesis = (time.time_ns() // 1_000_000 // L) * L - 300 * L
    config = EpochConfig(genesis_ms=genesis, length_ms=L, emission=1_000 * TOKEN, grace_ms=GRACE)
    return World(store, w3, deployment, DistributorClient(w3, deployment, signer), config, genesis)


def on_chain(e: EpochRow) -> bool:
    """Published, or settled with its tx (the scheduler settles a published epoch at its next turn
    with no confirmations asked)."""
    return e.status in ("published", "settled") and e.tx_hash is not None


def statuses(stored: dict[int, EpochRow]) -> dict[int, str]:
    return {n: "on chain" if on_chain(e) else e.status for n, e in stored.items()}


async def assert_on_chain(world: World, stored: dict[int, EpochRow]) -> None:
    """Every stored epoch that paid is on chain once with the stored root; the rest has no root."""
    counts = await world.published_on_chain()
    for n, e in stored.items():
        root = await world.distributor.root_of(n)
        if on_chain(e):
            assert counts[n] == 1, f"epoch {n} published {counts[n]} times"
            assert root == e.root
        else:  # settled without a tx: nobody had earned yet
            assert e.status == "settled" and counts[n] == 0 and root == b"\0" * 32
    assert set(counts) <= set(stored)


async def test_fresh_database_starts_at_the_earliest_reading_and_closes_every_epoch_in_order(
    world: World, accounts: list[LocalAccount], make_signer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.epochs")
    clock = FakeClock(world.end(2))
    # No reading stored yet: three epochs pass and nothing closes (it keeps polling).
    await clock.run_until(world.epochs(), world.end(5) + GRACE)
    assert await world.stored() == {}
    assert await world.published_on_chain() == Counter()

    # Readings arrive for epochs 7 and 9 (8 and 10 stay empty). The first epoch closed is 7 — not the
    # epoch holding "now", not epoch 1 — then every epoch up to the last whose end + grace passed.
    await world.readings_in(7)
    await world.readings_in(9, devices=(0,))
    clock.now = world.end(10) + GRACE - 1
    await clock.run_until(world.epochs(), world.end(10) + GRACE - 1)
    stored = await world.stored()
    assert sorted(stored) == [7, 8, 9]  # 10 is due one millisecond later
    clock.now = world.end(10) + GRACE
    await clock.run_until(world.epochs(), world.end(10) + GRACE)
    stored = await world.stored()
    assert sorted(stored) == [7, 8, 9, 10]
    assert all(on_chain(e) for e in stored.values())
    await assert_on_chain(world, stored)
    # Empty epochs after a paid one: published with the unchanged cumulative root and a total of 0.
    assert stored[8].root == stored[7].root and stored[8].allocated == 0
    assert stored[10].root == stored[9].root and stored[10].allocated == 0
    assert stored[7].allocated > 0 and stored[9].allocated > 0
    token_supply = await world.distributor.token.functions.totalSupply().call()
    assert token_supply == stored[7].allocated + stored[9].allocated
    assert await world.distributor.latest_epoch() == 10
    # The empty epoch 8 carries the owner's cumulative amount of epoch 7.
    owner = accounts[2]
    reward8 = await world.store.owner_reward(8, owner.address)
    assert reward8 is not None and reward8.amount == 0
    before7 = await world.store.owner_reward(7, owner.address)
    assert before7 is not None and reward8.cumulative == before7.cumulative > 0
    # Claims are against the latest root only (epoch 10's, the tree of 9): epoch 8's proof is stale.
    claimer = DistributorClient(world.w3, world.deployment, make_signer(owner))
    with pytest.raises(ChainError, match="InvalidProof"):
        await claimer.claim(owner.address, reward8.cumulative, reward8.proof)
    reward = await world.store.owner_reward(10, owner.address)
    assert reward is not None and reward.cumulative > reward8.cumulative
    _, paid = await claimer.claim(owner.address, reward.cumulative, reward.proof)
    assert paid == reward.cumulative
    # Closed in order, one INFO line per epoch closed and per epoch published.
    closes = [r.getMessage() for r in caplog.records if " closed: " in r.getMessage()]
    publishes = [r.getMessage() for r in caplog.records if " published: " in r.getMessage()]
    assert [m.split()[1] for m in closes] == ["7", "8", "9", "10"]
    assert [m.split()[1] for m in publishes] == ["7", "8", "9", "10"]
    tx7 = stored[7].tx_hash
    assert tx7 is not None
    assert f"tx 0x{tx7.hex()}" in publishes[0] and f"block {stored[7].block_number}" in publishes[0]
    assert [s for s in stored.values()] == sorted(stored.values(), key=lambda e: e.block_number)


async def test_restart_finishes_a_closed_epoch_then_downtime_closes_each_missed_epoch_once(
    world: World,
) -> None:
    await world.readings_in(1)
    await world.readings_in(2)
    clock = FakeClock(world.end(2) + GRACE)
    await clock.run_until(world.epochs(), world.end(2) + GRACE)
    assert statuses(await world.stored()) == {1: "on chain", 2: "on chain"}

    # A crash between closing epoch 3 and publishing it: stored 'closed', not on chain.
    await world.readings_in(3)
    closed = await world.epochs().close(3)
    assert closed.status == "closed" and await world.distributor.root_of(3) == b"\0" * 32
    # ...and the service stays down for epochs 4..8 (readings of 4 and 6 were stored before it died).
    await world.readings_in(4)
    await world.readings_in(6, devices=(1,))
    clock.now = world.end(8) + GRACE + 10
    await clock.run_until(world.epochs(), world.end(9))  # the restart
    stored = await world.stored()
    assert sorted(stored) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(on_chain(e) for e in stored.values())
    await assert_on_chain(world, stored)
    blocks = [stored[n].block_number for n in sorted(stored)]
    assert blocks == sorted(blocks) and len(set(blocks)) == len(blocks)  # published in order, one by one
    assert stored[3].root == closed.root  # the stored close was published, not recomputed

    # Another restart changes nothing, and nothing is due before epoch 9's end + grace.
    await clock.run_until(world.epochs(), world.end(9) + GRACE - 1)
    assert sorted(await world.stored()) == list(range(1, 9))
    assert sum((await world.published_on_chain()).values()) == 8


async def test_nobody_earned_yet_settles_without_a_tx(world: World, store: Store) -> None:
    # Readings of a device missing from the registry mirror earn nothing: zero root, no tx.
    stranger = dataclasses.replace(packet(0, 1, world.genesis + 10), device_id=b"\x99" * 32)
    await store.write_batch([stranger], [])
    await world.readings_in(2)
    clock = FakeClock(world.end(2) + GRACE)
    await clock.run_until(world.epochs(), world.end(2) + GRACE)
    stored = await world.stored()
    assert statuses(stored) == {1: "settled", 2: "on chain"}
    await assert_on_chain(world, stored)


async def test_failures_are_retried_never_skipped_and_refusals_are_marked_not_retried(
    world: World,
    accounts: list[LocalAccount],
    make_signer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.epochs")
    await world.readings_in(1)
    await world.readings_in(2)
    # 1) The RPC is down (nothing listens on the port): closing works (database), publishing fails.
    dead_w3 = AsyncWeb3(AsyncHTTPProvider("http://127.0.0.1:9", exception_retry_configuration=None))
    down = DistributorClient(dead_w3, world.deployment, Signer(dead_w3, accounts[0]))
    clock = FakeClock(world.end(2) + GRACE)
    epochs = world.epochs(down)
    try:
        await clock.run_until(epochs, clock.now + 1_000 + 2_000 + 4_000)
    finally:
        await dead_w3.provider.disconnect()
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 4
    assert all("publishing epoch 1 failed" in r.getMessage() for r in failures)
    assert [r.getMessage().split("retrying in ")[1] for r in failures] == ["1.0 s", "2.0 s", "4.0 s", "8.0 s"]
    assert failures[0].exc_info and not failures[1].exc_info  # one traceback per streak
    assert statuses(await world.stored()) == {1: "closed"}

    # 2) The chain is back but the key lacks REWARDS_ROLE: the contract refuses the publish for good
    #    (AccessControlUnauthorizedAccount, seen at the estimate): each due epoch is marked 'refused'
    #    with an alert instead of being retried forever, and nothing is sent.
    caplog.clear()
    stranger = accounts[7]
    epochs.chain = DistributorChain(DistributorClient(world.w3, world.deployment, make_signer(stranger)))
    await clock.run_until(epochs, clock.now + 1_000)
    stored = await world.stored()
    assert statuses(stored) == {1: "refused", 2: "refused"}
    assert stored[1].raw_tx is None and await world.distributor.root_of(1) == b"\0" * 32
    messages = [r.getMessage() for r in caplog.records]
    alerts = [m for m in messages if m.startswith("ALERT")]
    assert [m.split()[2] for m in alerts] == ["1:", "2:"]
    assert all("AccessControlUnauthorizedAccount" in m for m in alerts)
    assert not any("failed" in m for m in messages)

    # 3) The role is granted: epoch 3's cumulative root pays what epochs 1 and 2 earned too.
    await world.distributor.signer.send(  # type: ignore[union-attr]
        world.distributor.contract.functions.grantRole(REWARDS_ROLE, stranger.address)
    )
    await world.readings_in(3)
    await clock.run_until(epochs, world.end(3) + GRACE)
    stored = await world.stored()
    assert statuses(stored) == {1: "refused", 2: "refused", 3: "on chain"}
    supply = await world.distributor.token.functions.totalSupply().call()
    assert supply == sum(e.allocated for e in stored.values()) > stored[3].allocated


async def test_the_scheduler_survives_a_database_error_before_any_epoch_is_known(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure while deciding (the store's queries) is retried too; the loop never ends on its own."""
    await world.readings_in(1)
    await world.store.pool.execute("ALTER TABLE epochs RENAME TO epochs_away")  # a real PostgreSQL error
    failures = 0

    async def repair_after_two(_: float) -> None:
        nonlocal failures
        failures += 1
        if failures == 2:
            await world.store.pool.execute("ALTER TABLE epochs_away RENAME TO epochs")

    clock = FakeClock(world.end(1) + GRACE, before_sleep=repair_after_two)
    await clock.run_until(world.epochs(), clock.now + 3_000)
    messages = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert [m.split(" (")[0] for m in messages] == ["deciding the next epoch failed"] * 2
    assert 'relation "epochs" does not exist' in messages[0]
    assert on_chain((await world.stored())[1])


async def test_two_schedulers_on_one_database_close_and_publish_each_epoch_once(
    world: World,
    pg_dsn: str,
    accounts: list[LocalAccount],
    make_signer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two processes running the `epochs` part (each its own pool and signer): the scheduler lock lets
    one act at a time, so no epoch is closed twice or signed twice (which would leave one of them
    waiting forever for a receipt of a transaction that lost its nonce)."""
    caplog.set_level(logging.INFO, logger="ingest.epochs")
    for n in (1, 2, 4):
        await world.readings_in(n)
    pool = await create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        other = Epochs(
            Store(pool),
            DistributorClient(world.w3, world.deployment, make_signer(accounts[0])),
            world.config,
        )
        start, stop = world.end(5) + GRACE, world.end(6) + GRACE - 1  # epoch 6 is not due
        a, b = FakeClock(start), FakeClock(start)
        await asyncio.gather(a.run_until(world.epochs(), stop), b.run_until(other, stop))
    finally:
        await pool.close()
    stored = await world.stored()
    assert sorted(stored) == [1, 2, 3, 4, 5] and all(on_chain(e) for e in stored.values())
    await assert_on_chain(world, stored)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "failed" in m], messages
    assert sum(" closed: " in m for m in messages) == 5 and sum(" published: " in m for m in messages) == 5
    assert any("standing by" in m for m in messages)


async def test_a_publish_found_on_chain_is_adopted_and_a_mined_refusal_is_marked(
    world: World, accounts: list[LocalAccount], make_signer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingest.epochs")
    for n in (1, 2, 3):
        await world.readings_in(n)
    epochs = world.epochs()
    # Epoch 1 reached the chain without the database knowing (a database restored from a backup).
    e1 = await epochs.close(1)
    receipt = await world.distributor.publish_epoch(1, e1.root, e1.allocated)
    # Epoch 2's journaled tx is mined but reverts: epoch 3 got on chain first (latestEpoch = 3), from
    # another account (the journaled tx holds this account's next nonce until it is broadcast).
    signer = world.distributor.signer
    assert signer is not None
    await signer.send(world.distributor.contract.functions.grantRole(REWARDS_ROLE, accounts[6].address))
    e2 = await epochs.close(2)
    call = world.distributor.publish_epoch_fn(2, e2.root, e2.allocated)
    raw, tx_hash, nonce = await signer.sign(call, gas=300_000)  # explicit gas: no estimate to refuse it
    await world.store.journal_tx(2, raw, tx_hash, nonce)
    other = DistributorClient(world.w3, world.deployment, make_signer(accounts[6]))
    await other.publish_epoch(3, b"\x33" * 32, e1.allocated)  # the cumulative total so far

    clock = FakeClock(world.end(2) + GRACE)
    await clock.run_until(epochs, clock.now + 1_000 + 2_000)
    stored = await world.stored()
    manual_tx = bytes(receipt["transactionHash"])
    assert on_chain(stored[1]) and stored[1].tx_hash == manual_tx
    assert (await world.published_on_chain())[1] == 1  # adopted, not published twice
    # The mined revert is decoded (replayed at the latest block): EpochNotAfterLatest can never pass,
    # so epoch 2 is marked 'refused', its journal cleared, and it is not retried.
    assert stored[2].status == "refused" and stored[2].raw_tx is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("epoch 1 published: " in m and "(found on chain)" in m for m in messages)
    assert not [m for m in messages if "failed" in m]
    [alert] = [m for m in messages if m.startswith("ALERT")]
    assert alert.startswith("ALERT epoch 2:") and "EpochNotAfterLatest(2, 3)" in alert


async def test_without_a_rewards_key_epochs_are_closed_then_published_oldest_first_once_there_is_one(
    world: World,
) -> None:
    for n in (1, 3):
        await world.readings_in(n)
    clock = FakeClock(world.end(3) + GRACE)
    await clock.run_until(world.epochs(DistributorClient(world.w3, world.deployment, None)), clock.now + 1)
    stored = await world.stored()
    assert statuses(stored) == {1: "closed", 2: "closed", 3: "closed"}
    assert await world.published_on_chain() == Counter()
    await clock.run_until(world.epochs(), clock.now + 1)  # the key is configured: a restart with it
    stored = await world.stored()
    assert all(on_chain(e) for e in stored.values()) and sorted(stored) == [1, 2, 3]
    await assert_on_chain(world, stored)
    blocks = [stored[n].block_number for n in (1, 2, 3)]
    assert blocks == sorted(blocks)


async def _journal_then_take_nonce(world: World, epochs: Epochs, epoch: int, account: LocalAccount) -> int:
    """Close `epoch`, sign and journal its publish (not broadcast: a crash right after the journal
    write), then mine a plain value transfer signed by the same key at that very nonce."""
    signer = world.distributor.signer
    assert signer is not None
    e = await epochs.close(epoch)
    call = world.distributor.publish_epoch_fn(epoch, e.root, e.allocated)
    raw, tx_hash, nonce = await signer.sign(call)
    await world.store.journal_tx(epoch, raw, tx_hash, nonce)
    transfer = account.sign_transaction(
        {
            "to": account.address,
            "value": 1,
            "gas": 21_000,
            "gasPrice": 2 * await world.w3.eth.gas_price,
            "nonce": nonce,
            "chainId": await world.w3.eth.chain_id,
        }
    )
    await world.w3.eth.wait_for_transaction_receipt(
        await world.w3.eth.send_raw_transaction(transfer.raw_transaction)
    )
    assert await world.w3.eth.get_transaction_count(account.address, "latest") > nonce
    return nonce


async def test_a_journaled_publish_whose_nonce_was_used_by_another_tx_is_re_signed_and_later_epochs_follow(
    world: World, accounts: list[LocalAccount], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: before, the rebroadcast's "nonce too low" was swallowed and the scheduler waited for
    a receipt that could never come (TimeExhausted every ~125 s), blocking every later epoch."""
    caplog.set_level(logging.INFO, logger="ingest.epochs")
    from ingest import metrics

    for n in (1, 2, 3):
        await world.readings_in(n)
    epochs = world.epochs()
    taken_before = metrics.EPOCH_NONCE_TAKEN._value.get()
    nonce = await _journal_then_take_nonce(world, epochs, 1, accounts[0])
    clock = FakeClock(world.end(3) + GRACE)
    started = time.monotonic()
    await clock.run_until(epochs, clock.now + 1)
    assert time.monotonic() - started < 20, "waited for a receipt that can never come"
    stored = await world.stored()
    assert statuses(stored) == {1: "on chain", 2: "on chain", 3: "on chain"}
    assert stored[1].tx_nonce > nonce  # re-signed at a fresh nonce
    await assert_on_chain(world, stored)
    assert metrics.EPOCH_NONCE_TAKEN._value.get() == taken_before + 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "epoch 1: publish tx 0x" in errors[0].getMessage()
    assert f"nonce {nonce} of {accounts[0].address} was used by another transaction" in errors[0].getMessage()
    assert not epochs.failing


async def test_a_lost_nonce_whose_epoch_is_on_chain_with_our_root_is_adopted(
    world: World, accounts: list[LocalAccount], make_signer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The journaled tx lost its nonce to a tx that published the same epoch with the same root (a
    second process with the same key): adopted, not published twice."""
    caplog.set_level(logging.INFO, logger="ingest.epochs")
    await world.readings_in(1)
    epochs = world.epochs()
    signer = world.distributor.signer
    assert signer is not None
    e1 = await epochs.close(1)
    root = e1.root
    raw, tx_hash, nonce = await signer.sign(world.distributor.publish_epoch_fn(1, root, e1.allocated))
    await world.store.journal_tx(1, raw, tx_hash, nonce)
    twin = DistributorClient(world.w3, world.deployment, make_signer(accounts[0]))  # same key, own nonce
    assert twin.signer is not None  # at the same nonce, with other gas: another tx
    receipt = await twin.signer.send(twin.publish_epoch_fn(1, root, e1.allocated), gas=300_000)
    assert bytes(receipt["transactionHash"]) != tx_hash
    clock = FakeClock(world.end(1) + GRACE)
    await clock.run_until(epochs, clock.now + 1)
    stored = await world.stored()
    assert on_chain(stored[1])
    assert stored[1].tx_hash == bytes(receipt["transactionHash"])
    assert (await world.published_on_chain())[1] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("was used by another transaction" in m for m in messages)
    assert any("epoch 1 published: " in m and "(found on chain)" in m for m in messages)


async def test_the_scheduler_rides_out_a_database_with_no_free_connection(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: `TooManyConnectionsError` (a real PostgreSQL with max_connections = 20, every slot
    taken by the test, the scheduler's own connections terminated) is a failed attempt like any
    other: logged, shown (`failing`, `depin_epoch_publish_failing`), retried; then the epoch is done."""
    from ingest import metrics

    async with small_postgres(20) as dsn:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        hog = ConnectionHog(dsn)
        try:
            await migrate(pool)
            store = Store(pool)
            await store.upsert_devices([await _device_row(world, d) for d in range(3)], block=10)
            local = dataclasses.replace(world, store=store)
            await local.readings_in(1)
            epochs = local.epochs()
            await hog.exhaust()
            failures = 0

            async def release_after_two(_: float) -> None:
                nonlocal failures
                if epochs.failing:
                    failures += 1
                    assert metrics.EPOCH_FAILING._value.get() == 1
                    if failures == 2:
                        await hog.release()

            clock = FakeClock(world.end(1) + GRACE, before_sleep=release_after_two)
            await clock.run_until(epochs, clock.now + 1_000 + 2_000 + 1)
            messages = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
            assert len(messages) == 2 and all(
                "TooManyConnectionsError" in m or "too many" in m for m in messages
            )
            assert on_chain((await local.stored())[1])
            assert not epochs.failing and metrics.EPOCH_FAILING._value.get() == 0
        finally:
            await hog.release()
            await pool.close()


async def _device_row(world: World, d: int) -> DeviceRecord:
    row = await world.store.pool.fetchrow("SELECT owner FROM devices WHERE device_id = $1", dev(d))
    assert row is not None
    return DeviceRecord(dev(d), b"k" * 32, row["owner"], 1, 0, True, 10 + d)


async def _rpc(w3: AsyncWeb3[Any], method: str, *params: Any) -> Any:
    response = await w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in response, response
    return response["result"]


async def test_a_published_epoch_settles_past_the_confirmations_and_a_reorg_that_drops_it_is_rebroadcast(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """anvil's evm_snapshot/evm_revert stand for a reorg: the block holding the publish is replaced by
    empty ones. The epoch goes back to 'signed', the same journaled bytes are sent again, and it settles
    only once DEPIN_CHAIN_CONFIRMATIONS blocks are past the new receipt. One EpochPublished on chain."""
    await world.readings_in(1)
    epochs = Epochs(world.store, world.distributor, dataclasses.replace(world.config, confirmations=2))
    await epochs.close(1)
    snapshot = await _rpc(world.w3, "evm_snapshot")
    first = await epochs.publish(1)
    assert first.status == "published" and first.block_hash is not None and first.raw_tx is not None
    assert await epochs.settle() == 1  # 0 of 2 confirmations
    await _rpc(world.w3, "evm_revert", snapshot)  # the reorg: the publish is gone
    for _ in range(3):
        await _rpc(world.w3, "evm_mine")
    assert await world.distributor.root_of(1) == b"\0" * 32
    assert await epochs.settle() == 0
    dropped = await world.store.get_epoch(1)
    assert dropped is not None and (dropped.status, dropped.block_number) == ("signed", None)
    assert dropped.raw_tx == first.raw_tx
    assert "is no longer on chain after its receipt was seen: a reorg" in caplog.text
    again = await epochs.publish(1)  # what the scheduler's next step does: rebroadcast, not re-sign
    assert again.status == "published" and again.tx_hash == first.tx_hash
    assert again.block_number is not None and again.block_number > (first.block_number or 0)
    await _rpc(world.w3, "evm_mine")
    assert await epochs.settle() == 1  # 1 of 2
    await _rpc(world.w3, "evm_mine")
    assert await epochs.settle() == 0
    settled = await world.store.get_epoch(1)
    assert settled is not None and settled.status == "settled" and settled.block_hash == again.block_hash
    assert await world.distributor.root_of(1) == first.root
    assert await world.published_on_chain() == Counter({1: 1})


async def test_with_the_rpc_down_a_published_epoch_waits_to_settle_and_the_next_is_still_sealed_and_closed(
    world: World, accounts: list[LocalAccount], caplog: pytest.LogCaptureFixture
) -> None:
    """Settling needs the chain, closing does not: an RPC outage must not delay the seal (late packets
    would otherwise still count after the grace)."""
    await world.readings_in(1)
    await world.readings_in(2)
    config = dataclasses.replace(world.config, confirmations=5)
    first = Epochs(world.store, world.distributor, config)
    await first.close(1)
    assert (await first.publish(1)).status == "published"
    dead_w3 = AsyncWeb3(AsyncHTTPProvider("http://127.0.0.1:9", exception_retry_configuration=None))
    down = Epochs(
        world.store, DistributorClient(dead_w3, world.deployment, Signer(dead_w3, accounts[0])), config
    )
    clock = FakeClock(world.end(2) + GRACE)
    try:
        await clock.run_until(down, clock.now + 1_000)
    finally:
        await dead_w3.provider.disconnect()
    stored = await world.stored()
    assert (stored[1].status, stored[2].status) == ("published", "closed")
    assert await world.store.sealed_until() == (world.end(2), 2)
    assert any("publishing epoch 2 failed" in r.getMessage() for r in caplog.records)
