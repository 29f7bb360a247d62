"""The whole path with real parts: Mosquitto, PostgreSQL, anvil (the first end-to-end acceptance test).

20 devices × 50 packets are stored exactly once; replays store nothing; forged and unregistered
packets are rejected with their reason; an epoch closes, its root on chain equals the API's, and an
owner claims exactly the amount in the manifest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from devices.chain.distributor import DistributorClient
from devices.chain.registry import DeviceInput, RegistryClient
from devices.chain.signer import Signer
from devices.protocol.codec import decode
from devices.protocol.model import SignedMessage
from ingest.adapters.mqtt import MqttConfig
from ingest.adapters.store import ReadStore
from ingest.core.rules import FLAG_MEDIA_REUSE
from ingest.service import Node, build_node, serve_api
from ingest.settings import Environment, load_settings
from simulator import cheaters
from simulator.fleet import make_fleet, next_message
from simulator.publish import publish_raw, unique_client_id
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration


async def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def running(
    store: Store, mosquitto: Any, w3: Any, deployment: Any, signer: Signer, accounts: list
) -> AsyncIterator[dict[str, Any]]:
    """A registered fleet and a running node (follower, consumer, API) on the real services."""
    owners = accounts[2:5]
    fleet = make_fleet(20, [o.address for o in owners], seed=2)
    registry = RegistryClient(w3, deployment, signer)
    await registry.register_batch(
        [DeviceInput(d.device_id, d.pubkey, d.owner, d.hw_class, d.asserted_cell) for d in fleet]
    )
    now = time.time_ns() // 1_000_000
    env = Environment(epoch_genesis_ms=now - 60_000, epoch_length_s=3600, registry_poll_s=0.2)
    mqtt = MqttConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=unique_client_id("ingest"),
        group=unique_client_id("g"),
    )
    node = build_node(load_settings(env, mqtt=mqtt), store, w3, deployment, rewards=accounts[0])
    await node.follower.load()
    await node.follower.sync_once()
    async with AsyncExitStack() as stack:
        tasks = [asyncio.create_task(node.follower.run()), asyncio.create_task(node.consumer.run())]
        stack.callback(lambda: [t.cancel() for t in tasks])
        await asyncio.wait_for(node.consumer.connected.wait(), 10)
        api = await stack.enter_async_context(serve_api(node.app(), "127.0.0.1", 0))
        yield {"node": node, "fleet": fleet, "owners": owners, "api": api, "broker": mosquitto}


async def test_full_path(running: dict[str, Any], w3: Any, deployment: Any, make_signer: Any) -> None:
    node: Node = running["node"]
    fleet, broker = running["fleet"], running["broker"]
    now = time.time_ns() // 1_000_000
    messages = [(d.topic, next_message(d, now - 50_000 + i * 1000)) for i in range(50) for d in fleet]
    await publish_raw(broker.host, broker.port, messages)
    await wait_until(lambda: node.consumer.stats.received >= 1000, what="1000 messages consumed")
    counts = await ReadStore(node.store.pool).counts()
    assert counts.packets == 1000 and counts.readings == 1000
    assert node.mirror.block >= deployment.block and len(node.mirror.devices) == 20

    # Replays of 100 stored packets, 10 forgeries, one unregistered device, and a dashcam re-sending a
    # frame another dashcam sent (stored in an earlier batch).
    replays = [cheaters.replay_of(m) for _, m in messages[:100]]
    forged = [cheaters.forged(d, now) for d in fleet[:10]]
    victim, copier = [d for d in fleet if d.kind == "dashcam"][:2]
    frame_msg = next(m for t, m in messages if t == victim.topic)
    copied = cheaters.media_copier(copier, frame_msg, now)
    await publish_raw(
        broker.host, broker.port, replays + forged + [cheaters.unregistered_device(now), copied]
    )
    await wait_until(lambda: node.consumer.stats.received >= 1112, what="1112 messages consumed")
    counts = await ReadStore(node.store.pool).counts()
    assert counts.packets == 1001, "a replay stored something new"
    assert counts.rejections == {"bad_signature": 10, "unknown_device": 1}
    assert node.consumer.stats.duplicates == 100
    frame = decode(frame_msg)
    assert isinstance(frame, SignedMessage) and frame.packet.readings[0].media is not None
    rows = await node.store.pool.fetch(
        "SELECT device_id, flags FROM readings WHERE media_sha256 = $1", frame.packet.readings[0].media.sha256
    )
    assert sorted((bytes(r["device_id"]), r["flags"] & FLAG_MEDIA_REUSE) for r in rows) == sorted(
        [(victim.device_id, FLAG_MEDIA_REUSE), (copier.device_id, FLAG_MEDIA_REUSE)]
    )

    # Owners can see why a packet was rejected.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running['api']}/v1/devices/{fleet[0].device_id.hex()}/rejections") as r:
            assert r.status == 200
            assert [x["reason"] for x in (await r.json())["rejections"]] == ["bad_signature"]

        # Close and publish the epoch; the chain's root is the API's root.
        row = await node.epochs.close_and_publish(1)
        assert row.status == "published"
        distributor = DistributorClient(w3, deployment)
        async with http.get(f"{running['api']}/v1/epochs/1") as r:
            epoch = await r.json()
        async with http.get(f"{running['api']}/v1/epochs/1/manifest/export") as r:
            manifest = await r.json()
        assert epoch["root"] == manifest["root"] == "0x" + (await distributor.root_of(1)).hex()
        assert int(epoch["allocated"]) == sum(int(d["amount"]) for d in manifest["devices"])
        assert int(epoch["allocated"]) + int(epoch["unissued"]) == node.epochs.config.emission

        # One owner claims with its own key and receives exactly its manifest amount.
        owner = running["owners"][0]
        async with http.get(f"{running['api']}/v1/owners/{owner.address}/proof") as r:
            proof = await r.json()
    expected = next(int(o["cumulative"]) for o in manifest["owners"] if o["owner"] == owner.address)
    assert expected > 0 and int(proof["cumulative"]) == expected
    claimer = DistributorClient(w3, deployment, make_signer(owner))
    before = await claimer.token_balance(owner.address)
    _, paid = await claimer.claim(owner.address, expected, [bytes.fromhex(p[2:]) for p in proof["proof"]])
    assert paid == expected
    assert await claimer.token_balance(owner.address) - before == expected
    _, again = await claimer.claim(owner.address, expected, [bytes.fromhex(p[2:]) for p in proof["proof"]])
    assert again == 0
