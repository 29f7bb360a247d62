"""`depin run` as an OS process, every part, settings from DEPIN_* only, on real PostgreSQL, Mosquitto
and anvil: epochs close and are published on chain by themselves, and a late packet is refused.

Nobody calls close: the test only publishes signed readings and watches the chain, the API and the
process's log. Epochs are 4 s long with genesis a few seconds ahead of the start, so the readings of
epochs 1 and 2 (timestamps up to ~20 s ahead: the clock-skew limit is 30 s) are sent in one go once
the process is up, and are stored before either epoch can close.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from eth_account.signers.local import LocalAccount

from devices.chain.artifacts import REWARDS_ROLE
from devices.chain.deployment import Schedule, deploy_contracts
from devices.chain.distributor import DistributorClient
from devices.chain.registry import DeviceInput, RegistryClient
from devices.chain.signer import Signer
from devices.protocol.topics import ack_topic
from ingest.adapters.store.rollups import mark_dirty
from ingest.adapters.store.rows import ms_to_dt
from simulator.fleet import make_fleet, next_message
from simulator.publish import publish_raw, unique_client_id
from tests.fixtures_pg import Store
from tests.procs import ConsumerProcess, consumer_env, table_counts, wait_for

pytestmark = pytest.mark.integration

LENGTH_S = 4
GRACE_S = 1
HOUR = 3_600_000
LEAD_MS = 12_000  # genesis this far after the settings are written: the process starts meanwhile


async def test_depin_run_closes_and_publishes_epochs_by_itself_and_refuses_a_late_packet(
    store: Store,
    pg_dsn: str,
    mosquitto: Any,
    w3: Any,
    deployment: Any,
    signer: Signer,
    accounts: list[LocalAccount],
    anvil_url: str,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    # The distributor numbers epochs as the service does (`depin run` refuses another schedule).
    genesis = time.time_ns() // 1_000_000 + LEAD_MS
    length = LENGTH_S * 1000
    deployment = await deploy_contracts(
        w3, signer, Schedule(genesis, length, 10_000 * 10**18), rewards_account=signer.address
    )
    fleet = make_fleet(7, [a.address for a in accounts[2:5]], seed=11)
    senders, late_device = fleet[:6], fleet[6]  # the 7th sends only the late packet
    await RegistryClient(w3, deployment, signer).register_batch(
        [DeviceInput(d.device_id, d.pubkey, d.owner, d.hw_class, d.asserted_cell) for d in fleet]
    )
    # The service publishes with a key of its own holding REWARDS_ROLE (not the deployer's: this
    # test's process and the fixtures' signer must not share a nonce sequence).
    rewards = accounts[8]
    distributor = DistributorClient(w3, deployment, signer)
    await signer.send(distributor.contract.functions.grantRole(REWARDS_ROLE, rewards.address))
    key_file = tmp_path / "rewards.key"
    key_file.write_text(rewards.key.hex())
    key_file.chmod(0o600)
    deployment.save(tmp_path / "deployment.json")

    env = consumer_env(
        database_url=pg_dsn,
        mqtt_host=mosquitto.host,
        mqtt_port=mosquitto.port,
        client_id=unique_client_id("svc"),
        group=unique_client_id("g"),
        chain_rpc_url=anvil_url,
        deployment_file=tmp_path / "deployment.json",
        rewards_key_file=key_file,
        epoch_genesis_ms=genesis,
        epoch_length_s=LENGTH_S,
        epoch_grace_s=GRACE_S,
        ack_feedback=True,
        rollup_interval_s=0.5,
    )
    # A reading three hours old, its hour dirty as a batch leaves it: the epochs part rolls it up.
    old_hour = (time.time_ns() // 1_000_000 // HOUR - 3) * HOUR
    async with store.pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO readings (ts, device_id, seq, idx, lat, lon, cell, kind, vals)
               VALUES ($1, '\\x01', 1, 0, 52.5, 13.4, $2, 'air', '{"pm25": 7.5}')""",
            ms_to_dt(old_hour + 60_000),
            0x8928308280FFFFF,
        )
        await mark_dirty(conn, [old_hour])
    proc = ConsumerProcess(env, tmp_path / "depin-run.log", parts="consume,follow,epochs,api")
    try:
        await proc.start()
        up_s = time.monotonic() - started
        # Three packets per device in epoch 1 and two in epoch 2 (readings 1 s apart).
        first = [(d.topic, next_message(d, genesis + 500 + i * 1000)) for i in range(3) for d in senders]
        second = [
            (d.topic, next_message(d, genesis + length + 500 + i * 1000)) for i in range(2) for d in senders
        ]
        await publish_raw(mosquitto.host, mosquitto.port, first + second)

        async def all_stored() -> bool:
            return (await table_counts(pg_dsn)).packets == len(first) + len(second)

        await wait_for(all_stored, 20, "every packet stored")
        assert time.time_ns() // 1_000_000 < genesis + length + GRACE_S * 1000, (
            f"too slow: the process was up after {up_s:.1f} s and epoch 1 may have closed before its "
            "readings were stored"
        )

        # Epochs 1 and 2 end up on chain with nobody calling close.
        async def published(n: int) -> bytes | None:
            root = await distributor.root_of(n)
            return root if root != b"\0" * 32 else None

        for n in (1, 2):
            try:
                root = await wait_for(lambda n=n: published(n), 30, f"epoch {n} on chain", every=0.25)
            except AssertionError:
                raise AssertionError(f"epoch {n} not published; service log:\n{proc.log_tail(60)}") from None

            async def marked_published(n: int = n) -> dict[str, Any] | None:
                # The root is on chain once the tx is mined; the service marks the epoch published
                # only after it has the receipt, a moment later.
                async with aiohttp.ClientSession() as http, http.get(f"{proc.url}/v1/epochs/{n}") as r:
                    assert r.status == 200
                    body: dict[str, Any] = await r.json()
                return body if body["status"] in ("published", "settled") else None

            epoch = await wait_for(marked_published, 15, f"epoch {n} marked published")
            assert epoch["root"] == "0x" + root.hex()
            assert int(epoch["allocated"]) > 0
            assert epoch["cells"] > 0 and epoch["devices"] > 0 and "manifest" not in epoch
        assert await distributor.latest_epoch() == 2

        # The epochs part mirrors the distributor's events: an owner's rewards are claimable (no
        # challenge window here) and as of a mirrored block, read from the database.
        owner = senders[0].owner

        async def mirrored() -> dict[str, Any] | None:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{proc.url}/v1/owners/{owner}/rewards") as r,
            ):
                assert r.status == 200
                body: dict[str, Any] = await r.json()
            accepted = body["accepted"]
            return body if accepted is not None and accepted["epoch"] == 2 else None

        rewards = await wait_for(mirrored, 15, "the distributor's events mirrored")
        assert rewards["as_of_block"] is not None and rewards["claimed"] == "0"
        assert rewards["claimable"] == rewards["cumulative"] != "0"

        # A packet for epoch 1 sent after epoch 1 closed: refused `epoch_closed`, told on …/ack and
        # shown by the API; a redelivery of a packet stored in epoch 1 stays a duplicate.
        late = next_message(late_device, genesis + 2_000)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=unique_client_id("ack")) as sub:
            await sub.subscribe(ack_topic(late_device.device_id), qos=0)
            await publish_raw(mosquitto.host, mosquitto.port, [(late_device.topic, late), first[0]])
            async with asyncio.timeout(15):
                async for message in sub.messages:
                    feedback = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    break
        assert feedback == {"accepted": 0, "flagged": 0, "seq": {str(late_device.seq): "epoch_closed"}}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{proc.url}/v1/devices/{late_device.device_id.hex()}/rejections") as r,
        ):
            rejections = (await r.json())["rejections"]
        assert [(x["seq"], x["reason"]) for x in rejections] == [(late_device.seq, "epoch_closed")]
        assert "closed epoch" in rejections[0]["detail"]

        async def counted() -> dict[str, float] | None:
            m = await proc.metrics()
            return m if m.get('depin_rejected_total{reason="epoch_closed"}') == 1 else None

        metrics = await wait_for(counted, 10, "the epoch_closed rejection counted")
        assert metrics["depin_duplicates_total"] == 1
        assert metrics["depin_epochs_published_total"] >= 2
        counts = await table_counts(pg_dsn)
        assert counts.packets == len(first) + len(second) and counts.rejections == {"epoch_closed": 1}

        async def rolled_up() -> bool:
            rows = await store.pool.fetch(
                "SELECT n, total FROM readings_hourly WHERE hour = $1 AND name = 'pm25'", ms_to_dt(old_hour)
            )
            return [tuple(r) for r in rows] == [(1, 7.5)]

        await wait_for(rolled_up, 10, "the old hour rolled up by the epochs part")
        assert (await proc.metrics())['depin_rollup_hours_refreshed_total{result="clean"}'] >= 1
    finally:
        await proc.stop()
    log = proc.log_file.read_text()
    for n in (1, 2):  # one INFO line per epoch closed and per epoch published
        assert log.count(f"epoch {n} closed: ") == 1, log[-3000:]
        assert log.count(f"epoch {n} published: ") == 1, log[-3000:]
    print(f"\ndepin run process: up in {up_s:.1f} s, test {time.monotonic() - started:.1f} s")
