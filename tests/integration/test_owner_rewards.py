"""`GET /v1/owners/{address}/rewards` from an API-only process (`depin run --parts api`: no chain), fed
by the distributor mirror (ingest/distributor_mirror.py) on anvil: a root pending in its challenge
window is pending, not claimable; past it, claimable; a claim shows as claimed (as of the mirrored
block); a vetoed root marks its epoch 'vetoed', counts and alerts, and is never claimable. The
mirror is idempotent, respects the confirmations and replays after a reset.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.chain.deployment import Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from devices.protocol.model import DeviceRecord, Reading
from ingest import metrics
from ingest.adapters.store.payouts import PayoutStore
from ingest.distributor_mirror import DistributorMirror
from ingest.epochs import EpochConfig, Epochs
from ingest.model import AcceptedPacket
from tests.fixtures_pg import Store
from tests.procs import ConsumerProcess

pytestmark = pytest.mark.integration

TOKEN = 10**18
L = 60_000
WINDOW_S = 4
CELL = 0x8928308280FFFFF


def dev(n: int) -> bytes:
    return hashlib.sha256(b"rewards-device" + bytes([n])).digest()


async def _write(store: Store, genesis: int, epoch: int, device: int, seq: int) -> None:
    ts = genesis + (epoch - 1) * L + 1_000
    readings = tuple(Reading(ts_ms=ts + i, lat=52.5, lon=13.4, vals={"t": 20.0}) for i in range(10))
    digest = hashlib.sha256(dev(device) + seq.to_bytes(8, "big")).digest()
    pkt = AcceptedPacket(
        device_id=dev(device),
        seq=seq,
        kind="weather",
        payload_digest=digest,
        received_ms=ts,
        readings=readings,
        cells=(CELL,) * len(readings),
        flags=(0,) * len(readings),
        message_digest=hashlib.sha256(b"msg" + digest).digest(),
    )
    assert (await store.write_batch([pkt], [])).stored == 1


async def test_owner_rewards_from_an_api_only_process_follow_pending_accepted_claimed_and_vetoed(
    store: Store,
    pg_dsn: str,
    w3: AsyncWeb3[Any],
    signer: Signer,
    make_signer: Any,
    accounts: list[LocalAccount],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    genesis = time.time_ns() // 1_000_000 - 5 * L
    emission = 1_000 * TOKEN
    deployment = await deploy_contracts(
        w3,
        signer,
        Schedule(genesis_ms=genesis, epoch_length_ms=L, epoch_emission=emission, challenge_window_s=WINDOW_S),
        rewards_account=signer.address,
    )
    owner = accounts[2]
    await store.upsert_devices([DeviceRecord(dev(0), b"k" * 32, owner.address, 1, 0, True, 10)], block=10)
    await _write(store, genesis, 1, 0, 1)
    await _write(store, genesis, 2, 0, 2)
    distributor = DistributorClient(w3, deployment, signer)
    epochs = Epochs(store, distributor, EpochConfig(genesis_ms=genesis, length_ms=L, emission=emission))
    vetoes: list[int] = []

    def on_veto(epoch: int) -> None:
        vetoes.append(epoch)
        epochs.vetoed(epoch)  # what `depin run` wires: /readyz names epochs until the next publish

    mirror = DistributorMirror(PayoutStore(store.pool), distributor, on_veto=on_veto)

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env.update(DEPIN_DATABASE_URL=pg_dsn, DEPIN_API_KEYS="off", PYTHONUNBUFFERED="1")
    api = ConsumerProcess(env, tmp_path / "api.log", parts="api", wait_for_mqtt=False)

    async def rewards(address: str = owner.address) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{api.url}/v1/owners/{address}/rewards") as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body

    try:
        await api.start()
        before = await rewards()
        assert before["as_of_block"] is None and before["epochs"] == [] and before["claimable"] == "0"

        await epochs.close(1)
        one = await epochs.publish(1)
        assert one.status == "published"
        await mirror.sync_once()
        body = await rewards(owner.address.lower())
        amount1 = int(body["cumulative"])
        assert amount1 > 0 and body["epochs"][0]["epoch"] == 1 and body["epochs"][0]["amount"] == str(amount1)
        assert body["accepted"] is None and body["claimable"] == "0"  # in its challenge window
        assert body["pending"]["epoch"] == 1 and body["pending"]["cumulative"] == str(amount1)
        assert body["pending"]["claimable_from_ms"] > time.time() * 1000 - 2_000
        assert body["as_of_block"] == await w3.eth.block_number

        await asyncio.sleep(WINDOW_S + 1)  # the window passes: claimable (a claim promotes it)
        body = await rewards()
        assert body["pending"] is None and body["accepted"]["epoch"] == 1
        assert body["claimable"] == str(amount1) and body["claimed"] == "0"

        proof = await store.owner_reward(1, owner.address)
        assert proof is not None
        _, paid = await DistributorClient(w3, deployment, make_signer(owner)).claim(
            owner.address, proof.cumulative, proof.proof
        )
        assert paid == amount1
        body = await rewards()
        assert body["claimed"] == "0"  # not mirrored yet: as of the mirrored block
        await mirror.sync_once()
        body = await rewards()
        assert body["claimed"] == str(amount1) and body["claimable"] == "0"
        assert body["as_of_block"] == await w3.eth.block_number

        # Epoch 2 published, then vetoed by the guardian within its window.
        await epochs.close(2)
        assert (await epochs.publish(2)).status == "published"
        await mirror.sync_once()
        body = await rewards()
        amount2 = int(body["cumulative"])
        assert body["pending"]["epoch"] == 2 and amount2 > amount1
        vetoed_before = metrics.EPOCHS_VETOED._value.get()
        await distributor.veto(2)
        with caplog.at_level(logging.ERROR, logger="ingest.distributor_mirror"):
            await mirror.sync_once()
        assert vetoes == [2] and metrics.EPOCHS_VETOED._value.get() == vetoed_before + 1
        assert "ALERT epoch 2: GUARDIAN_ROLE vetoed its root" in caplog.text
        assert (await store.get_epoch(2)).status == "vetoed"  # type: ignore[union-attr]
        body = await rewards()
        assert body["pending"] is None and body["accepted"]["epoch"] == 1 and body["claimable"] == "0"
        assert [e["status"] for e in body["epochs"]][:1] == ["vetoed"]

        # What happens next: the next epoch's cumulative root carries the vetoed epoch's amounts.
        assert epochs.failing and "vetoed by GUARDIAN_ROLE" in (epochs.last_error or "")
        await _write(store, genesis, 3, 0, 3)
        await epochs.close(3)
        assert (await epochs.publish(3)).status == "published"
        epochs._set_failing(None)  # what the scheduler does after a step that went through
        assert not epochs.failing
        await asyncio.sleep(WINDOW_S + 1)
        await mirror.sync_once()
        body = await rewards()
        amount3 = int(body["cumulative"])
        assert body["accepted"]["epoch"] == 3 and amount3 > amount2
        assert body["claimable"] == str(amount3 - amount1)  # epoch 2's amount and epoch 3's

        # Idempotent: a second pass over the same blocks stores nothing twice; a reset replays all.
        count = await store.pool.fetchval("SELECT count(*) FROM distributor_events")
        await mirror.sync_once()
        await PayoutStore(store.pool).reset(deployment.distributor, deployment.block - 1, WINDOW_S)
        await mirror.sync_once()
        assert await store.pool.fetchval("SELECT count(*) FROM distributor_events") == count
        assert vetoes == [2]  # the replayed veto: its epoch is already 'vetoed', no second alert
        assert (await rewards()) == body
        assert not epochs.failing  # a replayed veto is old news

        # Confirmations: nothing newer than latest − N is mirrored.
        deep = DistributorMirror(PayoutStore(store.pool), distributor, confirmations=1_000)
        await PayoutStore(store.pool).reset(deployment.distributor, deployment.block - 1, WINDOW_S)
        await deep.sync_once()
        assert await store.pool.fetchval("SELECT count(*) FROM distributor_events") == 0
    finally:
        await api.stop()
