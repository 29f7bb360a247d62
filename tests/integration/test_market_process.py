"""Buyers' money through `depin run --parts epochs,api` as an OS process, settings from DEPIN_* only, on
real PostgreSQL and anvil: the process mirrors a deposit and a bounty from the chain, meters a prepaid
key's queries (402 once its credit is spent), and its epochs pay the revenue share to the collecting
devices' owners, the rest to DEPIN_TREASURY_ADDRESS, the bounty to the covering device and the
uncovered epoch back to the funder — who all claim it with the proofs from its API.

The contracts' schedule is the service's (epochs of 6 s from a genesis a few seconds ahead), so the
bounty's window is checked on chain in the same numbering and every publish waits for its epoch's end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.chain.deployment import Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from devices.claims import api_proofs, claim_rewards
from ingest.adapters.store.keys import KeyStore
from ingest.core.market import account_of
from ingest.core.metering import meter_cell
from tests.fixtures_pg import Store
from tests.integration.test_market import CELLS, PREMINE, packet, seed_devices
from tests.procs import ConsumerProcess, consumer_env, wait_for

pytestmark = pytest.mark.integration

LENGTH_S = 6
LEAD_MS = 8_000
PRICE = 10**15


async def test_depin_run_meters_prepaid_keys_and_pays_revenue_and_bounties(
    store: Store,
    pg_dsn: str,
    w3: AsyncWeb3[Any],
    signer: Signer,
    make_signer: Callable[[LocalAccount], Signer],
    accounts: list[LocalAccount],
    anvil_url: str,
    tmp_path: Path,
) -> None:
    owner_a, owner_c, treasury, buyer, rewards = (accounts[i] for i in (3, 5, 6, 7, 8))
    length = LENGTH_S * 1000
    genesis = time.time_ns() // 1_000_000 + LEAD_MS
    deployment = await deploy_contracts(
        w3, signer, Schedule(genesis, length, 100 * 10**18, premine=PREMINE), rewards_account=rewards.address
    )
    deployment.save(tmp_path / "deployment.json")
    key_file = tmp_path / "rewards.key"
    key_file.write_text(rewards.key.hex())
    key_file.chmod(0o600)
    operator = DistributorClient(w3, deployment, signer)
    await operator.transfer(buyer.address, 10_000 * PRICE)
    paying = DistributorClient(w3, deployment, make_signer(buyer))

    # Devices 0 (owner A) and 2 (owner C) read in epoch 1, in cells 0 and 1; nobody in epoch 2.
    await seed_devices(store, [owner_a.address, owner_a.address, owner_c.address])
    await store.write_batch([packet(0, CELLS[0], 1, genesis + 100)], [])
    await store.write_batch([packet(2, CELLS[1], 2, genesis + 200)], [])
    key, record = await KeyStore(store.pool).create("buyer", ("read",))
    await paying.deposit(account_of(record.key_id), 5 * PRICE)  # 5 units
    x7 = meter_cell(CELLS[0])
    _, bounty = await paying.create_bounty(1, 2, [x7], 1_001)

    env = consumer_env(
        database_url=pg_dsn,
        mqtt_host="127.0.0.1",
        mqtt_port=1,  # no consume part: no broker
        client_id="market",
        group="market",
        chain_rpc_url=anvil_url,
        deployment_file=tmp_path / "deployment.json",
        rewards_key_file=key_file,
        epoch_genesis_ms=genesis,
        epoch_length_s=LENGTH_S,
        epoch_grace_s=1,
        epoch_emission=10**6,
        price_per_unit=PRICE,
        treasury_address=treasury.address,
        market_poll_s=0.5,
        api_key_cache_s=0,
    )
    proc = ConsumerProcess(env, tmp_path / "depin-run.log", parts="epochs,api", wait_for_mqtt=False)
    auth = {"Authorization": f"Bearer {key}"}
    try:
        await proc.start()
        async with aiohttp.ClientSession(headers=auth) as http:

            async def credited() -> bool:
                async with http.get(f"{proc.url}/v1/usage") as r:
                    return r.status == 200 and (await r.json())["credit"]["deposited"] == str(5 * PRICE)

            await wait_for(credited, 20, "the deposit mirrored by the process")
            await asyncio.sleep(max(0.0, (genesis + 500 - time.time_ns() / 1e6) / 1000))  # epoch 1 runs

            async def query(cell: int) -> tuple[int, Any]:
                async with http.get(f"{proc.url}/v1/readings", params={"cell": f"{meter_cell(cell):x}"}) as r:
                    return r.status, await r.json()

            assert (await query(CELLS[0]))[0] == 200  # 3 units
            assert (await query(CELLS[1]))[0] == 200  # 3 more: 6 of 5 spent, still served
            status, body = await query(CELLS[0])
            assert status == 402 and "prepaid credit" in body["error"], body

            async def published(n: int) -> dict[str, Any] | None:
                async with http.get(f"{proc.url}/v1/epochs/{n}") as r:
                    doc: dict[str, Any] = await r.json() if r.status == 200 else {}
                return doc if doc.get("status") in ("published", "settled") else None

            try:
                await wait_for(lambda: published(2), 40, "epoch 2 published", every=0.25)
            except AssertionError:
                raise AssertionError(f"epoch 2 not published; log:\n{proc.log_tail(60)}") from None
            manifests = []
            for n in (1, 2):
                async with http.get(f"{proc.url}/v1/epochs/{n}/manifest") as r:
                    manifests.append((await r.json())["market"])
            # Revenue: 5 units charged (the deposit), in the epoch the queries ran in.
            assert sum(int(m["revenue"]) for m in manifests) == 5 * PRICE
            assert [b["paid"] for m in manifests for b in m["bounties"]] == ["500", "0"]
            assert manifests[1]["bounties"][0]["refund"] == "501"
            async with http.get(f"{proc.url}/v1/bounties", headers={"Authorization": ""}) as r:
                assert r.status == 200  # public
                (listed,) = (await r.json())["bounties"]
            assert (listed["id"], listed["paid"], listed["refunded"], listed["settled_epoch"]) == (
                1,
                "500",
                "501",
                2,
            )
            assert listed["cells"] == [f"{x7:x}"] and listed["funder"] == buyer.address

            for account in (owner_a, owner_c, treasury, buyer):
                client = DistributorClient(w3, deployment, make_signer(account))
                result = await claim_rewards(client, account.address, api_proofs(proc.url, http))
                assert result.epoch == 2 and result.paid > 0, (account.address, result.summary())
            # the buyer funded the bounty: its uncovered epoch came back
            assert result.paid == 501
            assert await operator.token_balance(deployment.distributor) == 0
            assert bounty == 1
    finally:
        await proc.stop()
