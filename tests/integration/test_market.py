"""Buyers' money end to end on anvil and PostgreSQL (README "Rewards", buyers' revenue and bounties):
a deposit credits an API key, its queries spend the credit (402 once spent), the epoch pays the share
of the spend to the owners of the devices whose data was used and the rest to the treasury, and they
claim it; a bounty pays the devices covering its cells and refunds the uncovered epochs to its funder,
who claims it; the distributor never publishes beyond emission + what buyers paid in."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import h3
import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.chain.deployment import Deployment, Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from devices.claims import Proof, ProofSource, claim_rewards
from devices.errors import ChainError
from devices.protocol.model import DeviceRecord, Reading
from ingest.adapters.store.keys import KeyStore
from ingest.adapters.store.payouts import PayoutStore
from ingest.adapters.store.rows import proof_from_db
from ingest.api.app import create_app
from ingest.api.auth import ApiAccess
from ingest.api.metering import EpochGrid
from ingest.core.market import MarketParams, account_of
from ingest.core.merkle import CumulativeMerkleTree
from ingest.core.metering import meter_cell
from ingest.distributor_mirror import DistributorMirror
from ingest.epochs import EpochConfig, Epochs
from ingest.model import AcceptedPacket
from ingest.scoring import verify_epoch
from ingest.service import serve_api
from tests.fixtures_chain import TEST_SCHEDULE
from tests.fixtures_pg import Store
from tests.integration.test_cli import Cli, cli, key_file  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

TOKEN = 10**18
PRICE = 10**15  # base units a usage unit
PREMINE = 1_000_000 * TOKEN
# Three resolution-9 cells in different resolution-7 cells (usage is metered per resolution-7 cell)
CELLS = tuple(h3.str_to_int(h3.latlng_to_cell(52.5, lon, 9)) for lon in (13.40, 13.50, 13.60))


@pytest.fixture
async def deployment(w3: AsyncWeb3[Any], signer: Signer) -> Deployment:
    """The tests' permissive schedule (any epoch number has ended), with tokens premined to the
    deployer for the buyers."""
    schedule = Schedule(
        genesis_ms=TEST_SCHEDULE.genesis_ms,
        epoch_length_ms=TEST_SCHEDULE.epoch_length_ms,
        epoch_emission=TEST_SCHEDULE.epoch_emission,
        premine=PREMINE,
    )
    return await deploy_contracts(w3, signer, schedule, rewards_account=signer.address)


def dev(n: int) -> bytes:
    return hashlib.sha256(b"market-device" + bytes([n])).digest()


def packet(device: int, cell: int, seq: int, ts: int, n: int = 3) -> AcceptedPacket:
    readings = tuple(Reading(ts_ms=ts + i, lat=52.5, lon=13.4, vals={"t": 20.0 + i}) for i in range(n))
    digest = hashlib.sha256(dev(device) + seq.to_bytes(8, "big")).digest()
    return AcceptedPacket(
        device_id=dev(device),
        seq=seq,
        kind="weather",
        payload_digest=digest,
        received_ms=ts,
        readings=readings,
        cells=(cell,) * n,
        flags=(0,) * n,
        message_digest=hashlib.sha256(b"msg" + digest).digest(),
    )


async def seed_devices(store: Store, owners: list[str]) -> None:
    await store.upsert_devices(
        [DeviceRecord(dev(d), b"k" * 32, owner, 1, 0, True, 10 + d) for d, owner in enumerate(owners)],
        block=10,
    )
    await store.pool.execute(
        """INSERT INTO hw_classes (id, name, max_speed_kmh, h3_res, enabled)
           VALUES (1, 'dashcam', 150, 9, true)"""
    )


def db_proofs(store: Store) -> ProofSource:
    async def fetch(account: str, epoch: int) -> Proof | None:
        row = await store.pool.fetchrow(
            "SELECT cumulative, proof FROM owner_rewards WHERE owner = $1 AND epoch = $2", account, epoch
        )
        if row is None:
            return None
        proof = row["proof"] if not isinstance(row["proof"], str) else json.loads(row["proof"])
        return Proof(int(row["cumulative"]), proof_from_db(proof))

    return fetch


async def cumulative(store: Store, owner: str, epoch: int) -> int:
    v = await store.pool.fetchval(
        "SELECT cumulative FROM owner_rewards WHERE owner = $1 AND epoch = $2", owner, epoch
    )
    return int(v or 0)


async def claim_all(
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    store: Store,
    make_signer: Callable[[LocalAccount], Signer],
    who: list[LocalAccount],
    epoch: int,
) -> dict[str, int]:
    """Each account claims; returns what each now holds."""
    out = {}
    for account in who:
        client = DistributorClient(w3, deployment, make_signer(account))
        result = await claim_rewards(client, account.address, db_proofs(store))
        assert result.epoch == epoch
        out[account.address] = await client.token_balance(account.address)
    return out


async def test_revenue_from_a_prepaid_key_reaches_the_collectors_and_the_treasury(
    store: Store,
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    signer: Signer,
    make_signer: Callable[[LocalAccount], Signer],
    accounts: list[LocalAccount],
    cli: Cli,  # noqa: F811
) -> None:
    owner_a, owner_b, owner_c, treasury, buyer = (
        accounts[3],
        accounts[4],
        accounts[5],
        accounts[6],
        accounts[7],
    )
    await seed_devices(store, [owner_a.address, owner_b.address, owner_c.address])
    length = 60_000
    now = time.time_ns() // 1_000_000
    genesis = now - 5 * length - length // 2  # now: the middle of epoch 6
    seq = 0
    for d, cell, epoch in [(0, CELLS[0], 5), (1, CELLS[0], 5), (2, CELLS[1], 6)]:
        seq += 1
        res = await store.write_batch([packet(d, cell, seq, genesis + (epoch - 1) * length + 1_000 + d)], [])
        assert res.stored == 1

    # The buyer gets tokens (the premine) and prepays 5 units of usage for its key, with the CLI.
    key, record = await KeyStore(store.pool).create("buyer", ("read",))
    operator = DistributorClient(w3, deployment, signer)
    assert await operator.token_balance(signer.address) == PREMINE
    buyer_key = str(cli.key_file(buyer))
    await cli.fails(  # a payer without tokens is told so before anything is sent
        "credit", "deposit", "--key-id", record.key_id, "--amount", "5", "--key-file", buyer_key,
        match="holds 0 base units of the reward token",
    )  # fmt: skip
    await operator.transfer(buyer.address, 100 * PRICE)
    out = await cli.ok(
        "credit", "deposit", "--key-id", record.key_id, "--amount", str(5 * PRICE),
        "--key-file", str(cli.key_file(buyer)),
    )  # fmt: skip
    assert f"deposited {5 * PRICE} base units for API key {record.key_id}" in out
    assert f"0x{account_of(record.key_id).hex()}" in out
    mirror = DistributorMirror(PayoutStore(store.pool), operator)
    assert await mirror.sync_once() == 1
    assert await mirror.sync_once() == 0  # idempotent

    access = ApiAccess(grid=EpochGrid(genesis, length), price_per_unit=PRICE)

    async def ready() -> dict[str, Any]:
        return {"ready": True, "failing": []}

    app = create_app(store, ready, access=access)
    auth = {"Authorization": f"Bearer {key}"}
    async with serve_api(app, "127.0.0.1", 0) as url, aiohttp.ClientSession(headers=auth) as http:

        async def readings(cell: int) -> tuple[int, Any]:
            async with http.get(f"{url}/v1/readings", params={"cell": f"{meter_cell(cell):x}"}) as r:
                return r.status, await r.json()

        status, body = await readings(CELLS[1])  # device 2's readings of this epoch: 3 units
        assert status == 200 and len(body["readings"]) == 3
        status, body = await readings(CELLS[0])  # devices 0 and 1, epoch 5: 6 units (credit 2 left)
        assert status == 200 and len(body["readings"]) == 6
        status, body = await readings(CELLS[0])
        assert status == 402 and "spent its prepaid credit" in body["error"], body
        async with http.get(f"{url}/v1/usage") as r:
            assert r.status == 200
            credit = (await r.json())["credit"]
    assert credit == {
        "account": f"0x{account_of(record.key_id).hex()}",
        "deposited": str(5 * PRICE),
        "spent": str(9 * PRICE),
        "balance": "0",
        "price_per_unit": str(PRICE),
    }
    spent = await store.pool.fetch(
        "SELECT spent_epoch, cell, epoch, units, amount FROM usage_spend ORDER BY epoch DESC"
    )
    assert [(r["spent_epoch"], r["cell"], r["epoch"], r["units"], int(r["amount"])) for r in spent] == [
        (6, meter_cell(CELLS[1]), 6, 3, 3 * PRICE),
        (6, meter_cell(CELLS[0]), 5, 6, 6 * PRICE),
    ]

    config = EpochConfig(
        genesis_ms=genesis,
        length_ms=length,
        emission=1_000_000,
        market=MarketParams(revenue_share_bps=7_000, treasury=treasury.address),
    )
    epochs = Epochs(store, operator, config)
    await epochs.close(5)
    sixth = await epochs.close(6)
    m = sixth.manifest["market"]
    # Charged within the deposit: 5 of the 9 units spent. 70 % to the devices whose data was used
    # (devices 0 and 1 collected epoch 5's readings in cell 0, device 2 this epoch's in cell 1).
    assert (int(m["revenue"]), m["accounts"][0]["charged"]) == (5 * PRICE, str(5 * PRICE))
    # (the share is floored per (cell, epoch) pool: the treasury gets the rounding)
    assert int(m["revenue_share"]) + int(m["treasury"]) == 5 * PRICE
    assert 0 <= 5 * PRICE * 7 // 10 - int(m["revenue_share"]) <= 2
    revenue: dict[str, int] = {}
    for p in m["payouts"]:  # the treasury has one payout per (cell, epoch) pool
        revenue[p["owner"]] = revenue.get(p["owner"], 0) + int(p["amount"])
    assert set(revenue) == {owner_a.address, owner_b.address, owner_c.address, treasury.address}
    assert abs(revenue[owner_a.address] - revenue[owner_b.address]) <= 1  # 3 readings each
    assert sum(revenue.values()) == 5 * PRICE
    assert sixth.allocated + sixth.unissued == 1_000_000 + 5 * PRICE
    payouts = await store.pool.fetch("SELECT kind, owner, amount FROM epoch_payouts WHERE epoch = 6")
    assert sum(int(r["amount"]) for r in payouts) == 5 * PRICE
    whole = await store.manifest(6)  # the header (`sixth.manifest`) and the rows, assembled
    assert whole is not None and whole["market"] == m
    assert await verify_epoch(store, 6, whole, sixth.root) is None

    await epochs.publish(5)
    assert (await epochs.publish(6)).status == "published"
    held = await claim_all(w3, deployment, store, make_signer, [owner_a, owner_b, owner_c, treasury], 6)
    for account in (owner_a, owner_b, owner_c, treasury):
        assert held[account.address] == await cumulative(store, account.address, 6)
    assert held[treasury.address] == int(m["treasury"])
    # what the buyer paid in backs the revenue: the distributor minted only the emission allocated
    minted = int(await operator.contract.functions.minted().call())
    assert minted == sixth.allocated + (await epochs.store.get_epoch(5)).allocated - 5 * PRICE  # type: ignore[union-attr]
    assert await operator.funded() == 5 * PRICE
    assert await operator.token_balance(deployment.distributor) == 0  # everything owed was claimed


async def test_a_bounty_pays_the_covering_devices_and_refunds_the_uncovered_epochs(
    store: Store,
    w3: AsyncWeb3[Any],
    signer: Signer,
    make_signer: Callable[[LocalAccount], Signer],
    accounts: list[LocalAccount],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key_file: Callable[[LocalAccount], Path],  # noqa: F811
) -> None:
    owner_a, owner_c, funder = accounts[3], accounts[5], accounts[7]
    await seed_devices(store, [owner_a.address, owner_a.address, owner_c.address])
    length = 3_000
    block_ms = (await w3.eth.get_block("latest"))["timestamp"] * 1000
    genesis = block_ms - 4 * length - length // 2  # epochs 1..4 have ended by the chain's clock
    schedule = Schedule(genesis, length, 100 * TOKEN, premine=PREMINE)
    deployment = await deploy_contracts(w3, signer, schedule, rewards_account=signer.address)
    operator = DistributorClient(w3, deployment, signer)
    await operator.transfer(funder.address, 10_000 * TOKEN)
    deployment_file = tmp_path / "deployment.json"
    deployment.save(deployment_file)
    monkeypatch.delenv("DEPIN_OPERATOR_KEY", raising=False)
    monkeypatch.setenv("DEPIN_CHAIN_RPC_URL", w3.provider.endpoint_uri)  # type: ignore[attr-defined]
    monkeypatch.setenv("DEPIN_DEPLOYMENT_FILE", str(deployment_file))
    monkeypatch.setenv("DEPIN_OPERATOR_KEY_FILE", str(key_file(accounts[0])))
    cli = Cli(capsys, tmp_path, deployment, key_file)  # noqa: F811
    funder_key = str(key_file(funder))
    x7, z7 = meter_cell(CELLS[0]), meter_cell(CELLS[2])

    await cli.fails(
        "bounty", "create", "--cells", f"{x7:x}", "--from-epoch", "2", "--to-epoch", "3", "--amount", "10",
        "--key-file", funder_key, match="bounty epochs 2..3 refused: .* not be over",
    )  # fmt: skip
    out = await cli.ok(
        "bounty", "create", "--cells", f"{x7:x}", "--from-epoch", "6", "--to-epoch", "7",
        "--amount", str(1_001), "--key-file", funder_key,
    )  # fmt: skip
    assert "bounty 1: 1001 base units for 1 cells, epochs 6..7" in out
    out = await cli.ok(
        "bounty", "create", "--cells", f"{z7:x}", "--from-epoch", "6", "--to-epoch", "6",
        "--amount", str(500), "--key-file", funder_key,
    )  # fmt: skip
    listed = await cli.ok("bounty", "list")
    assert "bounty 2" in listed and "bounty 1" in listed and f"cells {x7:x}" in listed

    # Epoch 6: device 0 (owner A) covers bounty 1's cell, device 2 (owner C) another. Epoch 7: only
    # device 2. Bounty 2's cell is never covered.
    seq = 0
    for d, cell, epoch in [(0, CELLS[0], 6), (1, CELLS[0], 6), (2, CELLS[1], 6), (2, CELLS[1], 7)]:
        seq += 1
        await store.write_batch([packet(d, cell, seq, genesis + (epoch - 1) * length + 100 + d)], [])
    mirror = DistributorMirror(PayoutStore(store.pool), operator)
    assert await mirror.sync_once() == 2
    config = EpochConfig(
        genesis_ms=genesis, length_ms=length, emission=1_000, market=MarketParams(reading_cap=1_000)
    )
    epochs = Epochs(store, operator, config)
    await epochs.close(6)
    await epochs.close(7)
    m6 = (await store.get_epoch(6)).manifest["market"]  # type: ignore[union-attr]
    m7 = (await store.get_epoch(7)).manifest["market"]  # type: ignore[union-attr]
    b6 = {b["id"]: b for b in m6["bounties"]}
    assert (b6[1]["slice"], b6[1]["paid"], b6[1]["refund"], b6[1]["settled"]) == ("500", "500", "0", False)
    assert (b6[2]["paid"], b6[2]["refund"], b6[2]["settled"]) == ("0", "500", True)  # nobody covered it
    # both of owner A's devices covered the cell: one owner, paid as one leaf
    assert {p["owner"] for p in m6["payouts"] if p["kind"] == "bounty"} == {owner_a.address}
    assert [b["id"] for b in m7["bounties"]] == [1]  # bounty 2 is settled
    assert (m7["bounties"][0]["paid_before"], m7["bounties"][0]["refund"]) == ("500", "501")
    assert await verify_epoch(store, 7, await store.manifest(7)) is None  # type: ignore[arg-type]

    # Publish once epoch 7 has ended by the chain's clock; A and the funder claim.
    wait_s = (genesis + 7 * length - time.time_ns() / 1e6) / 1000 + 1.5
    await asyncio.sleep(max(0.0, wait_s))
    await w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    await epochs.publish(6)
    assert (await epochs.publish(7)).status == "published"
    held = await claim_all(w3, deployment, store, make_signer, [owner_a], 7)
    assert held[owner_a.address] == await cumulative(store, owner_a.address, 7)
    before = await operator.token_balance(funder.address)
    client = DistributorClient(w3, deployment, make_signer(funder))
    result = await claim_rewards(client, funder.address, db_proofs(store))
    assert result.paid == 500 + 501  # bounty 2 whole, bounty 1's uncovered epoch
    assert await operator.token_balance(funder.address) == before + 1_001
    rows = await store.bounties()
    assert [(b.id, b.paid, b.refunded, b.settled_epoch) for b in rows] == [(2, 0, 500, 6), (1, 500, 501, 7)]


async def test_publish_cannot_exceed_the_emission_plus_what_buyers_paid_in(
    w3: AsyncWeb3[Any], signer: Signer, accounts: list[LocalAccount]
) -> None:
    emission = 100 * TOKEN
    block_ms = (await w3.eth.get_block("latest"))["timestamp"] * 1000
    schedule = Schedule(block_ms - 90_000, 60_000, emission, premine=PREMINE)  # epoch 1 has ended
    deployment = await deploy_contracts(w3, signer, schedule, rewards_account=signer.address)
    d = DistributorClient(w3, deployment, signer)
    await d.deposit(account_of("dpk_aaaaaaaa"), 50 * TOKEN)
    thief = CumulativeMerkleTree([(accounts[9].address, emission + 50 * TOKEN + 1)])
    with pytest.raises(ChainError) as err:
        await d.publish_epoch(1, thief.root, emission + 50 * TOKEN + 1)
    assert err.value.error_name == "CumulativeCapExceeded"
    assert err.value.error_args == (emission + 50 * TOKEN + 1, emission + 50 * TOKEN)
    supply = int(await d.token.functions.totalSupply().call())
    await d.publish_epoch(1, b"\x01" * 32, emission + 50 * TOKEN)
    # the deposit backs its part: only the emission is minted
    assert int(await d.token.functions.totalSupply().call()) == supply + emission
    assert int(await d.contract.functions.minted().call()) == emission
    assert await d.token_balance(deployment.distributor) == emission + 50 * TOKEN
    with pytest.raises(ChainError) as err:  # a bounty whose window is over is refused
        await d.create_bounty(1, 1, [CELLS[0]], 10)
    assert err.value.error_name == "BadBountyWindow"


async def _rpc(w3: AsyncWeb3[Any], method: str, *params: Any) -> Any:
    response = await w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in response, response
    return response["result"]


async def test_a_reorg_below_the_cursor_removes_a_deposit_no_longer_on_chain_and_the_credit_follows(
    store: Store, w3: AsyncWeb3[Any], deployment: Deployment, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """anvil's evm_snapshot/evm_revert stand for a reorg: the block holding a mirrored deposit is
    replaced by empty ones at and past the mirror's cursor. The next pass sees the cursor block's hash
    changed, replays from the deployment block, and the deposit (and the key's credit) is gone; the one
    before the fork stays, and a replay adds nothing twice."""
    key, record = await KeyStore(store.pool).create("buyer", ("read",))
    account = account_of(record.key_id)
    operator = DistributorClient(w3, deployment, signer)
    mirror = DistributorMirror(PayoutStore(store.pool), operator, chunk_blocks=3)
    await operator.deposit(account, 5 * PRICE)
    await mirror.sync_once()
    assert await store.credit(record.key_id) == (5 * PRICE, 0)

    snapshot = await _rpc(w3, "evm_snapshot")
    await operator.deposit(account, 3 * PRICE)
    await _rpc(w3, "evm_mine")
    assert await mirror.sync_once() >= 1
    assert await store.credit(record.key_id) == (8 * PRICE, 0)
    cursor = await store.market_synced_block()
    assert cursor == await w3.eth.block_number

    await _rpc(w3, "evm_revert", snapshot)  # the reorg: the second deposit is gone
    while await w3.eth.block_number < (cursor or 0) + 2:
        await _rpc(w3, "evm_mine")
    assert await store.credit(record.key_id) == (8 * PRICE, 0)  # not noticed yet
    await mirror.sync_once()
    assert "a reorg below the mirrored height" in caplog.text
    assert await store.credit(record.key_id) == (5 * PRICE, 0)
    assert await store.pool.fetchval("SELECT count(*) FROM market_deposits") == 1
    assert await store.market_synced_block() == await w3.eth.block_number

    # The API's credit follows: GET /v1/usage shows what is on chain now.
    access = ApiAccess(
        grid=EpochGrid(TEST_SCHEDULE.genesis_ms, TEST_SCHEDULE.epoch_length_ms), price_per_unit=PRICE
    )

    async def ready() -> dict[str, Any]:
        return {"ready": True, "failing": []}

    app = create_app(store, ready, access=access)
    auth = {"Authorization": f"Bearer {key}"}
    async with serve_api(app, "127.0.0.1", 0) as url, aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{url}/v1/usage") as r:
            assert r.status == 200, await r.text()
            credit = (await r.json())["credit"]
    assert (credit["deposited"], credit["spent"]) == (str(5 * PRICE), "0")

    # A chain now shorter than the mirrored block (reverted, nothing mined yet) replays too; a pass
    # after it writes nothing new.
    await signer.resync_nonce()  # the reverted txs' nonces are free again
    snapshot = await _rpc(w3, "evm_snapshot")
    await operator.deposit(account, 2 * PRICE)
    await _rpc(w3, "evm_mine")
    await mirror.sync_once()
    assert await store.credit(record.key_id) == (7 * PRICE, 0)
    await _rpc(w3, "evm_revert", snapshot)
    await signer.resync_nonce()
    await mirror.sync_once()
    assert "the chain is below the mirrored block" in caplog.text
    assert await store.credit(record.key_id) == (5 * PRICE, 0)
    assert await mirror.sync_once() == 0
