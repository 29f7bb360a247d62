"""Ingest benchmark: how fast the real path runs on this machine, and against what.

    .venv/bin/python bench/ingest.py [--devices 3000] [--packets 20] [--quick]

Prints, all measured in this one run (one process tree, real Mosquitto and PostgreSQL):
1. raw PyNaCl Ed25519 verify rate, 1 thread and 2 threads (the ceiling for signed packets);
2. the service path (MQTT → decode/verify/rules → COPY → ack) for 1-reading and 10-reading packets:
   the broker is first loaded with a backlog on the consumer's persistent session, then the consumer
   is started and timed until every packet is committed — so publisher CPU does not cap the figure;
3. p50/p99 publish→commit latency with packets published live at half the measured max rate;
4. a plain MQTT→PostgreSQL bridge that verifies nothing and INSERTs row by row (the usual hand-rolled
   ingestor), draining the same kind of backlog on the same broker and database;
5. the ratios the issue asks for.

Devices send within their rate limit (many devices, a few packets each), as a real fleet does.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import cbor2
from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.adapters.broker import start_mosquitto  # noqa: E402
from ingest.adapters.db import create_pool, dsn_with_database, embedded_postgres, migrate  # noqa: E402
from ingest.adapters.mqtt import MqttConfig, MqttSource  # noqa: E402
from ingest.adapters.store import Store  # noqa: E402
from ingest.consumer import Consumer  # noqa: E402
from ingest.model import AcceptedPacket, BatchResult, RejectedMessage  # noqa: E402
from simulator.fleet import device_record, make_fleet, next_message, publisher  # noqa: E402

OWNERS = [f"0x{i:040x}" for i in range(1, 11)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def say(msg: str) -> None:
    print(msg, flush=True)


# --- 1. verify rate -------------------------------------------------------------------------------


def verify_rate(threads: int, seconds: float = 2.0) -> float:
    key = SigningKey.generate()
    signed = key.sign(b"x" * 200)
    vk = key.verify_key
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def work(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            for _ in range(200):
                vk.verify(signed)
            n += 200
        counts[i] = n

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return sum(counts) / (time.perf_counter() - started)


# --- publishers (separate processes: paho tops out near 10 k QoS1 msg/s per process) ----------------


async def _publish_all(host: str, port: int, items: list[tuple[str, bytes]], inflight: int = 1000) -> None:
    sem = asyncio.Semaphore(inflight)
    tasks: set[asyncio.Task[None]] = set()
    async with publisher(host, port, inflight=inflight) as client:

        async def one(topic: str, payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=1)
            finally:
                sem.release()

        for topic, payload in items:
            await sem.acquire()
            t = asyncio.create_task(one(topic, payload))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)


def _publisher_proc(host: str, port: int, items: list[tuple[str, bytes]]) -> None:
    asyncio.run(_publish_all(host, port, items))


def publish_in_processes(host: str, port: int, items: list[tuple[str, bytes]], procs: int = 2) -> float:
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    workers = [ctx.Process(target=_publisher_proc, args=(host, port, items[i::procs])) for i in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"publisher exited with {w.exitcode}")
    return time.perf_counter() - started


def _live_publisher_proc(host: str, port: int, seed: int, devices: int, rate: float, seconds: float) -> None:
    """Sign and publish at `rate` packets/s for `seconds`, timestamps = send time (for latency)."""
    fleet = make_fleet(devices, OWNERS, seed=seed)

    async def run() -> None:
        async with publisher(host, port, inflight=1000) as client:
            start = time.monotonic()
            sent = 0
            pending: set[asyncio.Task[None]] = set()
            while time.monotonic() - start < seconds:
                due = int((time.monotonic() - start) * rate)
                while sent < due:
                    dev = fleet[sent % len(fleet)]
                    task = asyncio.create_task(client.publish(dev.topic, next_message(dev, now_ms()), qos=1))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
                await asyncio.sleep(0.002)
            if pending:
                await asyncio.gather(*pending)

    asyncio.run(run())


# --- 2./3. the service path -------------------------------------------------------------------------


class TimedStore(Store):
    """Records publish→commit latency per stored packet (newest reading's ts → commit returned)."""

    latencies_ms: list[int]

    async def write_batch(self, accepted: Any, rejected: Any) -> BatchResult:
        result = await super().write_batch(accepted, rejected)
        done = now_ms()
        for p in accepted:
            assert isinstance(p, AcceptedPacket)
            self.latencies_ms.append(done - p.readings[-1].ts_ms)
        for r in rejected:
            assert isinstance(r, RejectedMessage)
        return result


async def fresh_store(admin_dsn: str, name: str) -> tuple[TimedStore, asyncpg.Pool]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    pool = await create_pool(dsn_with_database(admin_dsn, name), max_size=4)
    await migrate(pool)
    store = TimedStore(pool)
    store.latencies_ms = []
    return store, pool


async def register_session(cfg: MqttConfig) -> None:
    """Create the consumer's persistent session so a backlog queues for it while it is away."""
    async with MqttSource(cfg):
        pass


async def run_consumer_until(consumer: Consumer, total: int, timeout: float) -> float:
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    try:
        deadline = started + timeout
        while (
            consumer.stats.stored + consumer.stats.duplicates + sum(consumer.stats.rejected.values()) < total
        ):
            if task.done():
                task.result()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"consumer handled {consumer.stats.received} of {total}")
            await asyncio.sleep(0.01)
        return time.perf_counter() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def service_drain(admin_dsn: str, broker: Any, args: argparse.Namespace, rpp: int) -> dict[str, float]:
    store, pool = await fresh_store(admin_dsn, f"bench_service_{rpp}")
    try:
        fleet = make_fleet(args.devices, OWNERS, seed=rpp)
        registry = {d.device_id: device_record(d) for d in fleet}
        packets = args.packets if rpp == 1 else max(1, args.packets // 2)
        base = now_ms() - packets * 1000 * rpp
        items = [
            (d.topic, next_message(d, base + i * 1000 * rpp, readings_per_packet=rpp))
            for i in range(packets)
            for d in fleet
        ]
        cfg = MqttConfig(host=broker.host, port=broker.port, client_id=f"bench-svc-{rpp}", group=f"svc{rpp}")
        await register_session(cfg)
        pub_s = await asyncio.to_thread(publish_in_processes, broker.host, broker.port, items)
        consumer = Consumer(cfg, store, registry.get, batch_max_size=5000, batch_max_wait_s=0.05)
        seconds = await run_consumer_until(consumer, len(items), timeout=300)
        assert consumer.stats.stored == len(items), consumer.stats
        return {
            "packets": len(items),
            "readings": len(items) * rpp,
            "seconds": seconds,
            "packets_per_s": len(items) / seconds,
            "readings_per_s": len(items) * rpp / seconds,
            "publish_s": pub_s,
            "batches": consumer.stats.batches,
        }
    finally:
        await pool.close()


async def service_latency(
    admin_dsn: str, broker: Any, args: argparse.Namespace, rate: float
) -> dict[str, float]:
    store, pool = await fresh_store(admin_dsn, "bench_latency")
    try:
        devices = max(args.devices, int(rate * 2))  # stay within each device's rate limit
        fleet = make_fleet(devices, OWNERS, seed=99)
        registry = {d.device_id: device_record(d) for d in fleet}
        cfg = MqttConfig(host=broker.host, port=broker.port, client_id="bench-lat", group="lat")
        consumer = Consumer(cfg, store, registry.get, batch_max_size=5000, batch_max_wait_s=0.02)
        task = asyncio.create_task(consumer.run())
        await asyncio.wait_for(consumer.connected.wait(), 10)
        proc = mp.get_context("spawn").Process(
            target=_live_publisher_proc,
            args=(broker.host, broker.port, 99, devices, rate, args.latency_seconds),
        )
        proc.start()
        await asyncio.to_thread(proc.join)
        deadline = time.perf_counter() + 30
        expected = int(rate * args.latency_seconds * 0.95)
        while consumer.stats.stored < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        lat = sorted(store.latencies_ms)
        return {
            "rate": rate,
            "stored": len(lat),
            "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[int(len(lat) * 0.99) - 1],
            "mean_ms": statistics.fmean(lat),
        }
    finally:
        await pool.close()


# --- 4. the naive bridge ------------------------------------------------------------------------------


async def bridge_drain(admin_dsn: str, broker: Any, args: argparse.Namespace, rpp: int) -> dict[str, float]:
    """Subscribe, auto-ack, decode CBOR without verifying, one autocommit INSERT per reading."""
    name = "bench_bridge"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_with_database(admin_dsn, name))
    try:
        await conn.execute(
            "CREATE TABLE readings (topic text, seq bigint, ts bigint, lat float8, lon float8, vals text)"
        )
        fleet = make_fleet(args.devices, OWNERS, seed=1000 + rpp)
        packets = max(1, args.bridge_packets // len(fleet))
        base = now_ms() - packets * 1000 * rpp
        items = [
            (d.topic, next_message(d, base + i * 1000 * rpp, readings_per_packet=rpp))
            for i in range(packets)
            for d in fleet
        ]
        client_kw: dict[str, Any] = {"identifier": "bench-bridge", "clean_session": False}
        async with aiomqtt.Client(broker.host, broker.port, **client_kw) as c:
            await c.subscribe("depin/v1/+/up", qos=1)
        await asyncio.to_thread(publish_in_processes, broker.host, broker.port, items)
        total_rows = len(items) * rpp
        rows = 0
        started = time.perf_counter()
        async with aiomqtt.Client(broker.host, broker.port, max_inflight_messages=1000, **client_kw) as c:
            await c.subscribe("depin/v1/+/up", qos=1)
            async for msg in c.messages:
                body = cbor2.loads(msg.payload)
                packet = cbor2.loads(body.value[2])
                for r in packet["readings"]:
                    await conn.execute(
                        "INSERT INTO readings VALUES ($1, $2, $3, $4, $5, $6)",
                        str(msg.topic),
                        packet["seq"],
                        r["ts"],
                        r["lat"],
                        r["lon"],
                        str(r["vals"]),
                    )
                    rows += 1
                if rows >= total_rows:
                    break
        seconds = time.perf_counter() - started
        return {
            "packets": len(items),
            "readings": rows,
            "seconds": seconds,
            "readings_per_s": rows / seconds,
            "packets_per_s": len(items) / seconds,
        }
    finally:
        await conn.close()


# --- main -------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    say(f"machine: {mp.cpu_count()} cores · python {sys.version.split()[0]}")
    v1 = verify_rate(1)
    v2 = verify_rate(2)
    say(f"[1] PyNaCl verify: {v1:,.0f}/s on 1 thread, {v2:,.0f}/s on 2 threads")
    with tempfile.TemporaryDirectory(prefix="depin-bench-") as tmp:
        async with (
            embedded_postgres(Path(tmp) / "pg") as admin_dsn,
            start_mosquitto(Path(tmp) / "mqtt") as broker,
        ):
            s1 = await service_drain(admin_dsn, broker, args, 1)
            say(
                f"[2] service, 1 reading/packet:  {s1['packets']:,} packets in {s1['seconds']:.2f} s = "
                f"{s1['packets_per_s']:,.0f} packets/s ({s1['batches']} batches; backlog published in "
                f"{s1['publish_s']:.1f} s)"
            )
            s10 = await service_drain(admin_dsn, broker, args, 10)
            say(
                f"[2] service, 10 readings/packet: {s10['packets']:,} packets in {s10['seconds']:.2f} s = "
                f"{s10['packets_per_s']:,.0f} packets/s, {s10['readings_per_s']:,.0f} readings/s"
            )
            lat = await service_latency(admin_dsn, broker, args, rate=s1["packets_per_s"] / 2)
            say(
                f"[3] latency at {lat['rate']:,.0f} packets/s (half max), {lat['stored']:,} packets: "
                f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms"
            )
            b = await bridge_drain(admin_dsn, broker, args, 10)
            say(
                f"[4] row-by-row bridge, 10 readings/packet: {b['readings']:,} readings "
                f"in {b['seconds']:.2f} s"
                f" = {b['readings_per_s']:,.0f} readings/s"
            )
    say("")
    say("ratios (targets from issue 4):")
    r1, r10, rb = (
        s1["packets_per_s"] / v1,
        s10["readings_per_s"] / v1,
        s10["readings_per_s"] / b["readings_per_s"],
    )
    say(f"  1-reading packets / verify rate (1 thread):    {r1:.2f}  (≥ 0.4, stretch 0.6)")
    say(f"  10-reading readings/s / verify rate:           {r10:.2f}  (≥ 2.5)")
    say(f"  10-reading readings/s / bridge readings/s:     {rb:.1f}  (≥ 10)")
    say(f"  p99 publish→commit at half max rate:           {lat['p99_ms']:.0f} ms  (< 250 ms)")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=2000, help="simulated devices (default 2000)")
    p.add_argument("--packets", type=int, default=15, help="packets per device, 1-reading run (default 15)")
    p.add_argument("--bridge-packets", type=int, default=3000, help="packets for the bridge (default 3000)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="live publishing time (default 10)")
    p.add_argument("--quick", action="store_true", help="small run to check the script works")
    args = p.parse_args()
    if args.quick:
        args.devices, args.packets, args.bridge_packets, args.latency_seconds = 200, 5, 400, 3.0
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
