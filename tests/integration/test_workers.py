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
from devices.protocol.model import Reading, Reason
from devices.protocol.topics import ack_topic
from devices.sdk import build_message
from ingest.adapters.mqtt import MqttConfig, drop_session
from ingest.consumer import Consumer
from ingest.core.rules import FLAG_FLATLINE, FLAG_IMPLAUSIBLE_MOTION
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, sort_batch
from simulator import cheaters
from simulator.fleet import (
    SimDevice,
    device_record,
    make_fleet,
    next_message,
    offset_latlon,
    readings_for,
)
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


def _flatline_packets(d: SimDevice, t0: int) -> list[tuple[str, bytes]]:
    """Two packets of a weather station whose temperature never moves for 5 h: the first 0–150 min
    after `t0`, the second 160–300 min (its readings past 240 min are a flatline only against the
    first packet's run). Pressure and wind wobble, so only the temperature's run is stuck."""

    def reading(minute: int) -> Reading:
        vals = {
            "temperature_c": 15.0,
            "humidity_pct": 50.0 + minute % 20 / 10,
            "pressure_hpa": 1010.0 + minute % 20 / 100,
            "wind_mps": 2.0 + minute % 20 / 100,
        }
        return Reading(ts_ms=t0 + minute * 60_000, lat=d.lat, lon=d.lon, vals=vals, acc=1.5)

    first = [reading(m) for m in range(0, 151, 10)]
    second = [reading(m) for m in range(160, 301, 10)]
    return [(d.topic, build_message(d.identity, seq, d.kind, rs)) for seq, rs in ((1, first), (2, second))]


async def test_per_device_rules_are_exact_with_two_worker_processes(
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
    """One device's packets are spread over two workers on the shared subscription (Mosquitto: round
    robin, no affinity), yet the rate limit, a teleport and a flatline come out as one worker judges
    them (the pure pipeline with one `PipelineState`, on the same messages in publish order): the
    stateful rules run in each batch's transaction against the devices' `device_state` rows.
    With the state in each worker's memory (before migration 023) each worker admitted its own burst
    of 20, and a teleport or flatline whose packets went to different workers was missed."""
    fleet = new_fleet(40, [a.address for a in accounts[2:5]])
    await register(w3, deployment, signer, fleet)
    deployment.save(tmp_path / "deployment.json")
    records = {d.device_id: device_record(d) for d in fleet}
    # Odd counts: on Mosquitto's round robin over two workers the two packets of each teleport (sent
    # len(dashcams) messages apart) and of each flatline (len(weather) apart) go to different workers.
    dashcams = [d for d in fleet if d.kind == "dashcam"]
    dashcams = dashcams[: len(dashcams) - 1 + len(dashcams) % 2]
    weather = [d for d in fleet if d.kind == "weather"]
    weather = weather[: len(weather) - 1 + len(weather) % 2]
    flooders = [d for d in fleet if d.kind == "air"][:3]
    assert dashcams and weather and flooders
    now = time.time_ns() // 1_000_000
    # Rate limit: 60 packets per flooder within 60 ms of device time, interleaved: a burst of 20 each.
    flood = [
        (d.topic, build_message(d.identity, i + 1, d.kind, readings_for(d, i + 1, [now - 10_000 + i])))
        for i in range(60)
        for d in flooders
    ]
    # Teleport: a dashcam 100 km away one second later.
    t1 = now - 5_000

    def hop(d: SimDevice, seq: int, ts: int, east_m: float) -> tuple[str, bytes]:
        pos = offset_latlon(d.lat, d.lon, east_m, 0.0)
        return d.topic, build_message(d.identity, seq, d.kind, readings_for(d, seq, [ts], positions=[pos]))

    teleports = [hop(d, 1, t1, 0.0) for d in dashcams] + [hop(d, 2, t1 + 1000, 100_000.0) for d in dashcams]
    # Flatline: each station's first packet is stored before its second is sent (a run grows only
    # forwards in time, with one worker too).
    t0 = now - 6 * 3_600_000
    flat = {d.device_id: _flatline_packets(d, t0) for d in weather}
    first_phase = flood + teleports + [flat[d.device_id][0] for d in weather]
    second_phase = [flat[d.device_id][1] for d in weather]

    # What one worker decides, judging every message in publish order against one state.
    one = PipelineState()
    expected = [
        sort_batch([Incoming(t, m, now) for t, m in phase], records.get, now + 1000, PipelineConfig(), one)
        for phase in (first_phase, second_phase)
    ]
    accepted = [p for s in expected for p in s.accepted]
    limited = [r for s in expected for r in s.rejected if r.reason == Reason.RATE_LIMITED]
    assert {r.reason for s in expected for r in s.rejected} == {Reason.RATE_LIMITED}
    assert len(limited) == 40 * len(flooders)

    def flagged(packets: Any, bit: int) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for device_id, flags in packets:
            out[device_id] = out.get(device_id, 0) + sum(1 for f in flags if f & bit)
        return out

    want_motion = flagged(((p.device_id, p.flags) for p in accepted), FLAG_IMPLAUSIBLE_MOTION)
    want_flat = flagged(((p.device_id, p.flags) for p in accepted), FLAG_FLATLINE)
    assert all(want_motion[d.device_id] == 1 for d in dashcams)
    assert all(want_flat[d.device_id] == 6 for d in weather)

    group = unique_client_id("g")
    workers = []
    for i in range(2):
        env = consumer_env(
            database_url=pg_dsn,
            mqtt_host=mosquitto.host,
            mqtt_port=mosquitto.port,
            client_id=unique_client_id(f"x{i}"),
            group=group,
            chain_rpc_url=anvil_url,
            deployment_file=tmp_path / "deployment.json",
            batch_max_wait_ms=10,  # small batches: each device's packets spread over batches and workers
            batch_max_size=25,
        )
        workers.append(ConsumerProcess(env, tmp_path / f"worker{i}.log"))
    try:
        await asyncio.gather(*(w.start() for w in workers))

        async def outcomes_at_least(n: int) -> Any:
            async def check() -> bool:
                return (await table_counts(pg_dsn)).outcomes >= n

            return check

        await publish_resilient(mosquitto.host, mosquitto.port, first_phase)
        await wait_for(await outcomes_at_least(len(first_phase)), 60, "the first phase judged")
        await publish_resilient(mosquitto.host, mosquitto.port, second_phase)
        total = len(first_phase) + len(second_phase)
        await wait_for(await outcomes_at_least(total), 60, "every message judged")
        await asyncio.sleep(0.5)  # nothing more arrives
        counts = await table_counts(pg_dsn)
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch("SELECT device_id, flags FROM readings")
            limited_rows = await conn.fetch(
                "SELECT device_id, count(*) AS n FROM rejections WHERE reason = 'rate_limited' GROUP BY 1"
            )
        finally:
            await conn.close()
        got_limited = {bytes(r["device_id"]): r["n"] for r in limited_rows}
        got_motion = flagged(((bytes(r["device_id"]), [r["flags"]]) for r in rows), FLAG_IMPLAUSIBLE_MOTION)
        got_flat = flagged(((bytes(r["device_id"]), [r["flags"]]) for r in rows), FLAG_FLATLINE)
        # Every rule checked, then all differences named at once.
        wrong = []
        if got_limited != {d.device_id: 40 for d in flooders}:
            wrong.append(f"rate_limited per flooder {sorted(got_limited.values())}, one worker: 40 each")
        missed = [d for d in dashcams if got_motion.get(d.device_id, 0) != want_motion[d.device_id]]
        if missed:
            wrong.append(f"teleport: {len(missed)} of {len(dashcams)} dashcams not flagged exactly once")
        missed = [d for d in weather if got_flat.get(d.device_id, 0) != want_flat[d.device_id]]
        if missed:
            flats = sorted(got_flat.get(d.device_id, 0) for d in weather)
            wrong.append(f"flatline: {len(missed)} of {len(weather)} differ ({flats}, one worker: 6)")
        if (counts.packets, counts.rejections) != (len(accepted), {"rate_limited": len(limited)}):
            wrong.append(f"stored {counts.packets}, rejected {counts.rejections}; one: {len(accepted)}")
        assert not wrong, "; ".join(wrong)
        seen = [await w.metrics() for w in workers]
        shares = [m.get("depin_received_total", 0.0) for m in seen]
        assert all(s > 0 for s in shares), f"a worker did nothing: {shares}"
        # Every batch with a verified message locked its devices' rows, and says how long it waited.
        assert all(m.get("depin_device_state_lock_seconds_count", 0) > 0 for m in seen)
        waits = [m["depin_device_state_lock_seconds_sum"] for m in seen]
        print(f"\nreceived per worker {shares}, waited for state rows {[f'{w:.3f} s' for w in waits]}")
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
