"""Consumer behaviour on the real services: N worker processes share the load, backpressure bounds
what a worker buffers while the database is slow, owners get per-packet feedback on …/ack."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest

from devices.chain.registry import DeviceInput, RegistryClient
from devices.protocol.topics import ack_topic
from devices.sdk import build_message
from ingest.adapters.mqtt import MqttConfig, drop_session
from ingest.consumer import Consumer
from simulator import cheaters
from simulator.fleet import SimDevice, device_record, make_fleet, next_message, readings_for
from simulator.publish import unique_client_id
from tests.fixtures_pg import Store
from tests.procs import ConsumerProcess, consumer_env, publish_resilient, table_counts, wait_for

pytestmark = pytest.mark.integration


def new_fleet(n: int, owners: list[str]) -> list[SimDevice]:
    # A random seed: the session's broker is shared, so device ids (topics) must not repeat across tests.
    return make_fleet(n, owners, seed=random.randrange(2**32))


def messages_for(fleet: list[SimDevice], per_device: int) -> list[tuple[str, bytes]]:
    now = time.time_ns() // 1_000_000
    # One packet per second of device time: the per-device rate limit (1/s, burst 20) lets all through.
    return [(d.topic, next_message(d, now - 150_000 + i * 1000)) for i in range(per_device) for d in fleet]


async def register(w3: Any, deployment: Any, signer: Any, fleet: list[SimDevice]) -> None:
    await RegistryClient(w3, deployment, signer).register_batch(
        [DeviceInput(d.device_id, d.pubkey, d.owner, d.hw_class, d.asserted_cell) for d in fleet]
    )


async def test_two_worker_processes_split_the_load(
    store: Store,
    pg_dsn: str,
    mosquitto: Any,
    anvil_url: str,
    w3: Any,
    deployment: Any,
    signer: Any,
    accounts: list,
    tmp_path: Path,
) -> None:
    fleet = new_fleet(20, [a.address for a in accounts[2:5]])
    await register(w3, deployment, signer, fleet)
    deployment.save(tmp_path / "deployment.json")
    group = unique_client_id("g")
    workers = []
    for i in range(2):
        env = consumer_env(
            database_url=pg_dsn,
            mqtt_host=mosquitto.host,
            mqtt_port=mosquitto.port,
            client_id=unique_client_id(f"w{i}"),
            group=group,
            chain_rpc_url=anvil_url,
            deployment_file=tmp_path / "deployment.json",
        )
        workers.append(ConsumerProcess(env, tmp_path / f"worker{i}.log"))
    try:
        await asyncio.gather(*(w.start() for w in workers))
        messages = messages_for(fleet, 100)
        started = time.perf_counter()
        sent = (await publish_resilient(mosquitto.host, mosquitto.port, messages)).sent

        async def all_stored() -> bool:
            return (await table_counts(pg_dsn)).packets >= sent

        await wait_for(all_stored, 60, f"{sent} packets stored")
        elapsed = time.perf_counter() - started
        counts = await table_counts(pg_dsn)
        assert counts.packets == counts.readings == sent == 2000
        assert counts.rejections == {} and counts.repeated_keys == 0
        shares = [(await w.metrics()).get("depin_accepted_total", 0.0) for w in workers]
        print(f"\n2 workers: {sent} packets in {elapsed:.1f} s, accepted per worker {shares}")
        assert sum(shares) == sent, "each packet is stored first by exactly one worker"
        assert all(s > 0 for s in shares), f"a worker did nothing: {shares}"
        for w in workers:
            assert await w.stop() == 0, w.log_tail()
    finally:
        for w in workers:
            w.kill()
        for w in workers:
            await drop_session(mosquitto.host, mosquitto.port, w.env["DEPIN_MQTT_CLIENT_ID"])


async def test_backpressure_bounds_what_a_worker_buffers_while_the_database_is_slow(
    store: Store, pg_dsn: str, mosquitto: Any, accounts: list
) -> None:
    """The `packets` table is locked: the consumer is stuck in its first commit. The broker sends it
    no more than its Receive Maximum (50) unacked messages; the other 350 wait in the broker."""
    fleet = new_fleet(10, [accounts[2].address])
    records = {d.device_id: device_record(d) for d in fleet}
    cfg = MqttConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=unique_client_id("bp"),
        group=unique_client_id("g"),
        receive_maximum=50,
    )
    consumer = Consumer(cfg, store, records.get)
    task = asyncio.create_task(consumer.run())
    locker = await asyncpg.connect(pg_dsn)
    try:
        await asyncio.wait_for(consumer.connected.wait(), 15)
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE packets IN EXCLUSIVE MODE")  # INSERTs wait, reads do not
        sent = (await publish_resilient(mosquitto.host, mosquitto.port, messages_for(fleet, 40))).sent
        assert sent == 400

        async def at_window() -> int:
            return consumer.pending() >= 50

        await wait_for(at_window, 20, "50 messages buffered")
        peak = consumer.pending()
        for _ in range(20):  # 2 s more: nothing beyond the window arrives
            await asyncio.sleep(0.1)
            peak = max(peak, consumer.pending())
        assert peak == 50, f"buffered {peak} with receive_maximum=50"
        assert consumer.stats.batches == 0
        await tx.rollback()

        async def drained() -> bool:
            return consumer.stats.stored >= sent

        await wait_for(drained, 30, "the backlog to drain")
        assert (await table_counts(pg_dsn)).packets == sent
        assert max(consumer.stats.batches, 1) >= sent // 50  # never more than 50 per batch
    finally:
        await locker.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await drop_session(mosquitto.host, mosquitto.port, cfg.client_id)


async def test_owners_get_per_packet_feedback(store: Store, mosquitto: Any, accounts: list) -> None:
    fleet = new_fleet(3, [accounts[2].address])
    records = {d.device_id: device_record(d) for d in fleet}
    cfg = MqttConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        client_id=unique_client_id("fb"),
        group=unique_client_id("g"),
        ack_feedback=True,
    )
    consumer = Consumer(cfg, store, records.get)
    received: list[tuple[str, dict[str, Any]]] = []

    async def listen(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            received.append((str(m.topic), json.loads(m.payload)))

    task = asyncio.create_task(consumer.run())
    try:
        async with aiomqtt.Client(
            mosquitto.host, mosquitto.port, identifier=unique_client_id("owner")
        ) as sub:
            for d in fleet:
                await sub.subscribe(ack_topic(d.device_id), qos=1)
            listener = asyncio.create_task(listen(sub))
            await asyncio.wait_for(consumer.connected.wait(), 15)
            first = messages_for(fleet, 3)  # seqs 1..3 of every device
            await publish_resilient(mosquitto.host, mosquitto.port, first)
            await wait_for(_stored(consumer, 9), 20, "9 packets stored")
            a, b, c = fleet
            now = time.time_ns() // 1_000_000
            a.seq += 1  # a's seq 4: signed, stored, but every value far out of its kind's bounds
            hot = [r._replace(vals=dict.fromkeys(r.vals, 1e6)) for r in readings_for(a, a.seq, [now - 1000])]
            later = [
                (a.topic, build_message(a.identity, a.seq, a.kind, hot)),
                cheaters.replay_of(first[0][1]),  # a's seq 1 again: duplicate
                cheaters.forged(b, now),  # b's seq 4, wrong key: bad_signature
                (c.topic, b"\xa1not cose"),  # c, unreadable: malformed, no seq
            ]
            await publish_resilient(mosquitto.host, mosquitto.port, later)

            def outcomes(device: SimDevice) -> dict[str, str]:
                merged: dict[str, str] = {}
                for topic, body in received:
                    if topic == ack_topic(device.device_id):
                        merged.update(body["seq"])
                return merged

            def unsequenced(device: SimDevice) -> list[str]:
                return [
                    r
                    for t, body in received
                    if t == ack_topic(device.device_id)
                    for r in body.get("unsequenced", [])
                ]

            async def all_told() -> bool:
                return len(outcomes(a)) == 4 and "4" in outcomes(b) and bool(unsequenced(c))

            await wait_for(all_told, 20, "feedback for every packet")
            listener.cancel()
        assert outcomes(c) == {"1": "accepted", "2": "accepted", "3": "accepted"}
        assert unsequenced(c) == ["malformed"]
        assert outcomes(b) == {"1": "accepted", "2": "accepted", "3": "accepted", "4": "bad_signature"}
        told_a = [body["seq"] for t, body in received if t == ack_topic(a.device_id)]
        assert any(told.get("1") == "duplicate" for told in told_a), told_a
        assert sum(body["accepted"] for t, body in received if t == ack_topic(a.device_id)) == 4
        assert outcomes(a)["4"] == "flagged"  # stored, but it earns nothing: the owner is told why
        told_flags = [
            body["flags"] for t, body in received if t == ack_topic(a.device_id) and "flags" in body
        ]
        assert len(told_flags) == 1 and "bad_values" in told_flags[0]["4"], told_flags
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await drop_session(mosquitto.host, mosquitto.port, cfg.client_id)


def _stored(consumer: Consumer, n: int) -> Any:
    async def check() -> bool:
        return consumer.stats.stored >= n

    return check
