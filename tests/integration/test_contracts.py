"""DeviceRegistry, RewardToken and RewardDistributor on a real anvil, through devices.chain.

Run with `-s` to see the gas figures.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import h3
import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.chain.artifacts import load_artifact
from devices.chain.deployment import deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.registry import DeviceInput, RegistryClient
from devices.chain.signer import Signer
from devices.errors import ChainError, NonceTooLowError
from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import HwClassInfo, apply_events, apply_hw_class_events
from ingest.core.merkle import CumulativeMerkleTree
from ingest.dev.chain import start_eth_tester
from tests.fixtures_chain import TEST_SCHEDULE

pytestmark = pytest.mark.integration

MakeSigner = Callable[[LocalAccount], Signer]
DPR = 10**18
# Cells at the classes' resolutions: the registry refuses a cell of any other resolution.
WEATHER_CELLS = [h3.str_to_int(c) for c in sorted(h3.grid_disk(h3.latlng_to_cell(52.52, 13.40, 7), 9))]
CELL = h3.str_to_int(h3.latlng_to_cell(52.52, 13.40, 8))  # an air (res-8) cell


def did(label: str) -> bytes:
    return hashlib.sha256(b"device:" + label.encode()).digest()


def pk(label: str) -> bytes:
    return hashlib.sha256(b"pubkey:" + label.encode()).digest()


@pytest.fixture
def registry(w3: AsyncWeb3[Any], deployment: Any, signer: Signer) -> RegistryClient:
    return RegistryClient(w3, deployment, signer)


@pytest.fixture
def distributor(w3: AsyncWeb3[Any], deployment: Any, signer: Signer) -> DistributorClient:
    return DistributorClient(w3, deployment, signer)


# ------------------------------------------------------------------------------------------ registry


async def test_register_and_read_back(
    registry: RegistryClient, accounts: list[LocalAccount], deployment: Any
) -> None:
    owner = accounts[1].address
    rcpt = await registry.register(did("a"), pk("a"), owner, 1, 0)
    gas = rcpt["gasUsed"]
    print(f"\n[gas] register (single): {gas}")
    assert 60_000 < gas < 150_000
    rec = await registry.get_device(did("a"))
    assert rec == DeviceRecord(did("a"), pk("a"), owner, 1, 0, True, rcpt["blockNumber"])
    assert await registry.get_device(did("nobody")) is None

    with pytest.raises(ChainError) as err:
        await registry.register(did("a"), pk("other"), owner, 1, 0)
    assert err.value.error_name == "AlreadyRegistered"
    with pytest.raises(ChainError) as err:
        await registry.register(did("b"), pk("b"), owner, 99, 0)
    assert err.value.error_name == "UnknownHwClass"
    with pytest.raises(ChainError) as err:
        await registry.register(did("b"), b"\0" * 32, owner, 1, 0)
    assert err.value.error_name == "ZeroPubkey"


async def test_register_batch_is_idempotent(
    registry: RegistryClient, accounts: list[LocalAccount], signer: Signer
) -> None:
    owners = [a.address for a in accounts[1:4]]
    items = [DeviceInput(did(f"b{i}"), pk(f"b{i}"), owners[i % 3], 2, WEATHER_CELLS[i]) for i in range(250)]

    first = await registry.register_batch(items, chunk_size=100)
    assert len(first.receipts) == 3
    assert first.registered == [d.device_id for d in items] and first.skipped == 0
    per_item = first.receipts[0]["gasUsed"] / 100
    print(f"\n[gas] registerBatch: {per_item:.0f} per item (chunk of 100: {first.receipts[0]['gasUsed']})")
    assert 40_000 < per_item < 100_000

    # A re-run (e.g. after a crash mid-job) registers only what is new and never reverts.
    again = await registry.register_batch([*items, DeviceInput(did("new"), pk("new"), owners[0], 3, 0)])
    assert again.registered == [did("new")] and again.skipped == 250
    skip_gas = again.receipts[0]["gasUsed"] / 100
    print(f"[gas] registerBatch re-run: {skip_gas:.0f} per skipped item")
    assert skip_gas < 5_000

    rec = await registry.get_device(did("b7"))
    assert (
        rec is not None
        and rec.asserted_cell == WEATHER_CELLS[7]
        and rec.hw_class == 2
        and rec.owner == owners[1]
    )

    # A revoked id stays revoked: a batch skips it and a single register reverts.
    await registry.revoke(did("b0"))
    res = await registry.register_batch([items[0]])
    assert res.registered == [] and res.skipped == 1
    with pytest.raises(ChainError, match="AlreadyRegistered"):
        await registry.register(*items[0].as_tuple())
    rec0 = await registry.get_device(did("b0"))
    assert rec0 is not None and not rec0.active


async def test_lifecycle_events_fold_into_the_contract_state(
    w3: AsyncWeb3[Any],
    registry: RegistryClient,
    deployment: Any,
    accounts: list[LocalAccount],
    make_signer: MakeSigner,
) -> None:
    alice, bob = accounts[1], accounts[2]
    as_alice = RegistryClient(w3, deployment, make_signer(alice))
    as_bob = RegistryClient(w3, deployment, make_signer(bob))
    await registry.register_batch([DeviceInput(did(x), pk(x), alice.address, 3, 0) for x in "pqr"])

    await as_alice.rotate_key(did("p"), pk("p2"))  # owner may rotate
    await registry.rotate_key(did("q"), pk("q2"))  # so may the operator
    with pytest.raises(ChainError) as err:
        await as_bob.rotate_key(did("p"), pk("p3"))
    assert err.value.error_name == "NotOwnerOrOperator"

    await registry.set_location(did("q"), CELL)
    with pytest.raises(ChainError, match="AccessControlUnauthorizedAccount"):
        await as_alice.set_location(did("q"), WEATHER_CELLS[0])

    await as_alice.transfer(did("r"), bob.address)
    with pytest.raises(ChainError) as err:
        await registry.transfer(did("q"), bob.address)  # the operator does not own it
    assert err.value.error_name == "NotDeviceOwner"
    with pytest.raises(ChainError, match="NotDeviceOwner"):
        await as_alice.transfer(did("r"), alice.address)  # no longer hers

    await registry.revoke(did("p"))
    with pytest.raises(ChainError, match="DeviceNotActive"):
        await as_alice.rotate_key(did("p"), pk("p4"))
    with pytest.raises(ChainError, match="DeviceNotActive"):
        await registry.revoke(did("p"))
    with pytest.raises(ChainError, match="UnknownDevice"):
        await registry.revoke(did("never"))
    # With explicit gas there is no estimate to fail first: the tx is mined, reverts, and the error is
    # still named (by replaying the call).
    assert registry.signer is not None
    with pytest.raises(ChainError) as err:
        await registry.signer.send(registry.contract.functions.revoke(did("never")), gas=200_000)
    assert err.value.error_name == "UnknownDevice" and err.value.receipt is not None
    assert err.value.receipt["status"] == 0

    head = await w3.eth.block_number
    events = await registry.fetch_events(deployment.block, head, max_range=3)  # exercises chunking
    assert [e.position for e in events] == sorted(e.position for e in events)
    kinds = [e.kind for e in events]
    assert kinds.count("HwClassSet") == 3 and kinds.count("DeviceRegistered") == 3
    assert kinds[-5:] == ["KeyRotated", "KeyRotated", "LocationSet", "DeviceTransferred", "DeviceRevoked"]

    mirror: dict[bytes, DeviceRecord] = {}
    changed = apply_events(mirror, events)
    assert changed == {did("p"), did("q"), did("r")}
    for x in "pqr":
        assert mirror[did(x)] == await registry.get_device(did(x)), x
    assert not mirror[did("p")].active and mirror[did("p")].pubkey == pk("p2")
    assert mirror[did("q")].asserted_cell == CELL and mirror[did("r")].owner == bob.address
    # Events carry the block hash a follower checkpoints against.
    last = events[-1]
    assert last.block_hash == bytes((await w3.eth.get_block(last.block_number))["hash"])


async def test_hw_classes(
    w3: AsyncWeb3[Any],
    registry: RegistryClient,
    deployment: Any,
    accounts: list[LocalAccount],
    make_signer: MakeSigner,
) -> None:
    assert await registry.get_hw_class(1) == HwClassInfo(1, "dashcam", 200, 9, True)
    assert await registry.get_hw_class(2) == HwClassInfo(2, "weather", 0, 7, True)
    assert await registry.get_hw_class(3) == HwClassInfo(3, "air", 0, 8, True)
    assert await registry.get_hw_class(4) is None

    await registry.set_hw_class(4, "drone", 120, 10, True)
    await registry.register(did("d"), pk("d"), accounts[1].address, 4, 0)
    await registry.set_hw_class(4, "drone", 120, 10, False)  # disabled: no new registrations
    with pytest.raises(ChainError, match="UnknownHwClass"):
        await registry.register(did("d2"), pk("d2"), accounts[1].address, 4, 0)
    with pytest.raises(ChainError, match="InvalidH3Res"):
        await registry.set_hw_class(5, "bad", 0, 16, True)
    with pytest.raises(ChainError, match="AccessControlUnauthorizedAccount"):
        await RegistryClient(w3, deployment, make_signer(accounts[1])).set_hw_class(5, "x", 0, 7, True)

    classes: dict[int, HwClassInfo] = {}
    apply_hw_class_events(classes, await registry.fetch_events(deployment.block, await w3.eth.block_number))
    assert classes[1].name == "dashcam" and classes[4] == HwClassInfo(4, "drone", 120, 10, False)


async def test_asserted_cell_must_be_a_cell_at_the_class_resolution(
    registry: RegistryClient, accounts: list[LocalAccount]
) -> None:
    """A coarse cell would let a station claim a whole region: only a stationary class's own
    resolution is accepted, by register, registerBatch and setLocation alike (0 = no cell)."""
    owner = accounts[1].address
    berlin = (52.52, 13.40)
    res7 = h3.str_to_int(h3.latlng_to_cell(*berlin, 7))
    rcpt = await registry.register(did("ok"), pk("ok"), owner, 2, res7)
    print(f"\n[gas] register (stationary, with cell): {rcpt['gasUsed']}")
    await registry.register(did("nocell"), pk("nocell"), owner, 2, 0)  # allowed: earns no location trust

    edge = h3.str_to_int(h3.origin_to_directed_edges(h3.int_to_str(res7))[0])  # mode 2, not a cell
    bad = {
        "res 3 (~69 km)": h3.str_to_int(h3.latlng_to_cell(*berlin, 3)),
        "res 9": h3.str_to_int(h3.latlng_to_cell(*berlin, 9)),
        "directed edge": edge,
        "digit below the resolution not 7": res7 & ~1,
        "base cell 127": (res7 & ~(0x7F << 45)) | (0x7F << 45),
        "reserved bit 63": res7 | (1 << 63),
    }
    for why, cell in bad.items():
        with pytest.raises(ChainError) as err:
            await registry.register(did("x"), pk("x"), owner, 2, cell)
        assert err.value.error_name == "InvalidCell", why
        assert err.value.error_args == (cell, 7), why
    with pytest.raises(ChainError) as err:
        await registry.register(did("x"), pk("x"), owner, 1, res7)
    assert err.value.error_name == "MobileClassCell" and err.value.error_args == (1,)
    # One bad item reverts the whole batch.
    with pytest.raises(ChainError, match="InvalidCell"):
        await registry.register_batch(
            [
                DeviceInput(did("b1"), pk("b1"), owner, 2, res7),
                DeviceInput(did("b2"), pk("b2"), owner, 2, CELL),
            ]
        )
    assert await registry.get_device(did("b1")) is None

    with pytest.raises(ChainError, match="InvalidCell"):
        await registry.set_location(did("ok"), bad["res 3 (~69 km)"])
    await registry.register(did("cam"), pk("cam"), owner, 1, 0)
    with pytest.raises(ChainError, match="MobileClassCell"):
        await registry.set_location(did("cam"), res7)
    # A class's resolution changed: its devices move to cells of the new resolution.
    await registry.set_hw_class(2, "weather", 0, 8, True)
    await registry.set_location(did("ok"), CELL)
    rec = await registry.get_device(did("ok"))
    assert rec is not None and rec.asserted_cell == CELL


async def test_access_control(
    w3: AsyncWeb3[Any],
    registry: RegistryClient,
    deployment: Any,
    accounts: list[LocalAccount],
    make_signer: MakeSigner,
) -> None:
    owner, stranger = accounts[1], accounts[5]
    await registry.register(did("x"), pk("x"), owner.address, 1, 0)
    as_stranger = RegistryClient(w3, deployment, make_signer(stranger))
    as_owner = RegistryClient(w3, deployment, make_signer(owner))
    for attempt in (
        as_stranger.register(did("y"), pk("y"), stranger.address, 1, 0),
        as_stranger.register_batch([DeviceInput(did("y"), pk("y"), stranger.address, 1, 0)]),
        as_stranger.revoke(did("x")),
        as_owner.revoke(did("x")),  # owners cannot revoke: only operators
        DistributorClient(w3, deployment, make_signer(stranger)).publish_epoch(1, b"\1" * 32, 0),
    ):
        with pytest.raises(ChainError) as err:
            await attempt
        assert err.value.error_name == "AccessControlUnauthorizedAccount"
        assert err.value.error_args[0] in (stranger.address, owner.address)
    # A rejected attempt consumed no nonce: the owner's next valid tx goes straight through.
    await as_owner.rotate_key(did("x"), pk("x2"))
    rec = await registry.get_device(did("x"))
    assert rec is not None and rec.active and rec.pubkey == pk("x2")

    # Read-only clients refuse to send.
    with pytest.raises(ChainError, match="read-only"):
        await RegistryClient(w3, deployment).revoke(did("x"))


async def test_concurrent_sends_share_one_nonce_sequence(
    registry: RegistryClient, accounts: list[LocalAccount]
) -> None:
    receipts = await asyncio.gather(
        *(registry.register(did(f"c{i}"), pk(f"c{i}"), accounts[1].address, 1, 0) for i in range(20))
    )
    assert all(r["status"] == 1 for r in receipts)
    for i in range(20):
        assert await registry.get_device(did(f"c{i}")) is not None


async def test_nonce_resync_after_another_process_used_it(
    w3: AsyncWeb3[Any], deployment: Any, accounts: list[LocalAccount], make_signer: MakeSigner
) -> None:
    a, b = make_signer(accounts[0]), make_signer(accounts[0])  # two processes, one key
    ra, rb = RegistryClient(w3, deployment, a), RegistryClient(w3, deployment, b)
    await ra.register(did("n1"), pk("n1"), accounts[1].address, 1, 0)
    await rb.register(did("n2"), pk("n2"), accounts[1].address, 1, 0)  # b's first nonce = a's next
    await ra.register(did("n3"), pk("n3"), accounts[1].address, 1, 0)  # a's cached nonce is stale
    for x in ("n1", "n2", "n3"):
        assert await ra.get_device(did(x)) is not None


# ------------------------------------------------------------------------------------------ rewards


async def test_publish_epoch_exactly_once(distributor: DistributorClient, deployment: Any) -> None:
    root = b"\x11" * 32
    rcpt = await distributor.publish_epoch(1, root, 1_000 * DPR)
    print(f"\n[gas] publishEpoch (mint): {rcpt['gasUsed']}")
    assert await distributor.root_of(1) == root
    assert await distributor.latest_epoch() == 1
    assert await distributor.token_balance(deployment.distributor) == 1_000 * DPR

    with pytest.raises(ChainError) as err:
        await distributor.publish_epoch(1, b"\x22" * 32, 1)
    assert err.value.error_name == "EpochNotAfterLatest"
    assert err.value.error_args == (1, 1)
    # Gaps allowed (epochs without rewards); the total is cumulative: the same total mints nothing.
    await distributor.publish_epoch(3, b"\x33" * 32, 1_000 * DPR)
    with pytest.raises(ChainError, match="EpochNotAfterLatest"):
        await distributor.publish_epoch(2, b"\x22" * 32, 1)  # but never backwards
    with pytest.raises(ChainError, match="ZeroRoot"):
        await distributor.publish_epoch(4, b"\0" * 32, 1)
    assert await distributor.root_of(2) == b"\0" * 32
    assert await distributor.latest_epoch() == 3


async def test_claims_with_python_merkle_proofs(
    w3: AsyncWeb3[Any],
    distributor: DistributorClient,
    deployment: Any,
    accounts: list[LocalAccount],
    make_signer: MakeSigner,
) -> None:
    owners = [a.address for a in accounts[1:8]]
    epoch1 = {o: (i + 1) * 10 * DPR + i for i, o in enumerate(owners)}
    epoch1[owners[6]] = 0  # a zero leaf is valid and pays nothing
    tree1 = CumulativeMerkleTree(list(epoch1.items()))
    await distributor.publish_epoch(1, tree1.root, sum(epoch1.values()))

    # A relayer (stranger) submits; tokens go to the owner.
    relayer = DistributorClient(w3, deployment, make_signer(accounts[9]))
    o = owners[2]
    rcpt, paid = await relayer.claim(o, epoch1[o], tree1.proof(o))
    assert rcpt is not None
    print(f"\n[gas] claim (7 leaves, proof of {len(tree1.proof(o))}): {rcpt['gasUsed']}")
    assert 40_000 < rcpt["gasUsed"] < 120_000
    assert paid == epoch1[o] and await distributor.token_balance(o) == epoch1[o]
    assert await distributor.claimed(o) == epoch1[o]

    # A second claim: the client sends nothing (it would pay 0 and burn gas)...
    sent = await w3.eth.get_transaction_count(accounts[9].address)
    again, paid = await relayer.claim(o, epoch1[o], tree1.proof(o))
    assert again is None and paid == 0
    assert await w3.eth.get_transaction_count(accounts[9].address) == sent
    # ...and the contract, if sent one anyway, pays 0 without reverting.
    rcpt = await make_signer(accounts[9]).send(relayer.contract.functions.claim(o, epoch1[o], tree1.proof(o)))
    [event] = relayer.contract.events.Claimed().process_receipt(rcpt)
    assert event["args"]["amount"] == 0 and await distributor.token_balance(o) == epoch1[o]

    with pytest.raises(ChainError) as err:  # inflated amount
        await relayer.claim(o, epoch1[o] + 1, tree1.proof(o))
    assert err.value.error_name == "InvalidProof"
    with pytest.raises(ChainError, match="InvalidProof"):  # someone else's proof
        await relayer.claim(owners[3], epoch1[owners[3]], tree1.proof(owners[4]))

    # Epoch 2: cumulative totals grow; claiming against it pays only the difference.
    epoch2 = {k: v + 5 * DPR for k, v in epoch1.items()}
    epoch2[accounts[8].address] = 7 * DPR  # a new owner
    tree2 = CumulativeMerkleTree(list(epoch2.items()))
    await distributor.publish_epoch(2, tree2.root, sum(epoch2.values()))  # the cumulative total
    supply = await distributor.token.functions.totalSupply().call()
    assert supply == sum(epoch2.values())  # only the difference was minted
    _, paid = await relayer.claim(o, epoch2[o], tree2.proof(o))
    assert paid == 5 * DPR and await distributor.token_balance(o) == epoch2[o]
    # Claims are against the latest root only: an old proof no longer verifies.
    with pytest.raises(ChainError, match="InvalidProof"):
        await relayer.claim(owners[3], epoch1[owners[3]], tree1.proof(owners[3]))

    # Someone who never claimed epoch 1 collects both epochs in one claim.
    late = owners[4]
    _, paid = await DistributorClient(w3, deployment, make_signer(accounts[5])).claim(
        late, epoch2[late], tree2.proof(late)
    )
    assert paid == epoch2[late]

    # Everyone claims: the distributor ends with exactly what is still owed.
    for acct, amount in epoch2.items():
        await relayer.claim(acct, amount, tree2.proof(acct))
    assert await distributor.token_balance(deployment.distributor) == 0
    assert sum([await distributor.token_balance(a) for a in epoch2]) == sum(epoch2.values())


async def test_single_owner_tree_claims_with_empty_proof(
    distributor: DistributorClient, accounts: list[LocalAccount]
) -> None:
    o = accounts[1].address
    tree = CumulativeMerkleTree([(o, 42)])
    await distributor.publish_epoch(1, tree.root, 42)
    _, paid = await distributor.claim(o, 42, [])
    assert paid == 42


async def test_crash_safe_publish_sign_then_broadcast(
    w3: AsyncWeb3[Any], distributor: DistributorClient, signer: Signer
) -> None:
    signed = await signer.sign(distributor.publish_epoch_fn(1, b"\x44" * 32, 10))
    # (the publisher journals signed.raw_tx / signed.nonce here, then broadcasts — possibly twice)
    h1 = await signer.broadcast(signed.raw_tx)
    rcpt = await signer.wait(signed.tx_hash)
    assert h1 == signed.tx_hash and rcpt["status"] == 1 and await distributor.latest_epoch() == 1
    # A restart rebroadcasts the journaled bytes: idempotent even though the tx is already mined.
    assert await signer.broadcast(signed.raw_tx) == signed.tx_hash
    # A different tx signed with a nonce that is already used is reported, not silently dropped.
    stale = await Signer(w3, signer.account).sign(distributor.publish_epoch_fn(5, b"\x66" * 32, 10))
    await distributor.publish_epoch(2, b"\x55" * 32, 10)
    with pytest.raises(NonceTooLowError):
        await signer.broadcast(stale.raw_tx)
    # The signer recovers its nonce for the next send.
    await distributor.publish_epoch(3, b"\x77" * 32, 10)
    assert await distributor.latest_epoch() == 3


def test_artifacts_are_committed() -> None:
    for name in ("DeviceRegistry", "RewardToken", "RewardDistributor"):
        art = load_artifact(name)
        assert art["contractName"] == name and art["bytecode"].startswith("0x6")
        assert "cancun" in art["compiler"]


# ------------------------------------------------------------------------------------------ eth-tester


async def test_eth_tester_fallback_publish_and_claim() -> None:
    """The demo's no-Node path: same bytecode, same client code, in-process py-evm."""
    async with start_eth_tester() as (w3, accts):
        signer = Signer(w3, accts[0], poll_latency=0.01)
        deployment = await deploy_contracts(w3, signer, TEST_SCHEDULE, rewards_account=signer.address)
        reg = RegistryClient(w3, deployment, signer)
        await reg.register(did("e"), pk("e"), accts[1].address, 1, 0)
        events = await reg.fetch_events(deployment.block, await w3.eth.block_number)
        assert [e.kind for e in events][-1] == "DeviceRegistered"

        dist = DistributorClient(w3, deployment, signer)
        entries = [(accts[1].address, 3 * DPR), (accts[2].address, 4 * DPR)]
        tree = CumulativeMerkleTree(entries)
        await dist.publish_epoch(1, tree.root, 7 * DPR)
        _, paid = await dist.claim(accts[1].address, 3 * DPR, tree.proof(accts[1].address))
        assert paid == 3 * DPR and await dist.token_balance(accts[1].address) == 3 * DPR
        with pytest.raises(ChainError) as err:
            await dist.publish_epoch(1, tree.root, 1)
        assert err.value.error_name == "EpochNotAfterLatest"
        with pytest.raises(ChainError, match="InvalidProof"):
            await dist.claim(accts[2].address, 5 * DPR, tree.proof(accts[2].address))
