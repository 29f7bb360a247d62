"""Faults with the consumer as a real OS process on real Mosquitto, PostgreSQL and anvil
(docs/RELIABILITY.md A4, A5, C13, C14, G37).

Every test reconciles exactly: what the publisher got PUBACKed equals what is stored plus what is
rejected, with no reading stored twice. Redeliveries after a fault are absorbed by the (device, seq)
key (counted as duplicates by the restarted worker).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from devices.chain.registry import DeviceInput, RegistryClient
from ingest.adapters.db import create_pool, embedded_postgres, migrate
from ingest.adapters.mqtt import drop_session
from ingest.dev.broker import start_mosquitto
from simulator import cheaters
from simulator.fleet import SimDevice, make_fleet, next_message
from simulator.publish import unique_client_id
from tests.fixtures_pg import Store
from tests.procs import (
    ConnectionHog,
    ConsumerProcess,
    Counts,
    PostgresControl,
    PublishStats,
    consumer_env,
    publish_resilient,
    small_postgres,
    table_counts,
    try_counts,
    wait_for,
)

pytestmark = pytest.mark.integration

DEVICES = 20
PER_DEVICE = 75  # 1500 valid packets
FORGED_EVERY = 30  # + 50 forgeries → bad_signature
RATE = 300.0  # messages/s: the stream lasts ~5 s, so every fault lands mid-stream


class Scenario:
    """A registered fleet, its messages (valid + forged), and worker processes to run on them."""

    def __init__(self, fleet: list[SimDevice], deployment_file: Path, anvil_url: str, tmp: Path) -> None:
        self.fleet = fleet
        self.deployment_file = deployment_file
        self.anvil_url = anvil_url
        self.tmp = tmp
        now = time.time_ns() // 1_000_000
        self.messages: list[tuple[str, bytes]] = []
        self.valid_messages: list[tuple[str, bytes]] = []
        self.valid = self.forged = 0
        for i in range(PER_DEVICE * DEVICES):
            dev = fleet[i % DEVICES]
            # Each device one packet per second of device time: its rate limit (1/s) lets all through.
            ts = now - 15_000 - PER_DEVICE * 1000 + i * 1000 // DEVICES
            self.valid_messages.append((dev.topic, next_message(dev, ts)))
            self.messages.append(self.valid_messages[-1])
            self.valid += 1
            if i % FORGED_EVERY == FORGED_EVERY - 1:
                self.messages.append(cheaters.forged(dev, now))
                self.forged += 1

    def worker(
        self, database_url: str, host: str, port: int, name: str = "w", **extra: Any
    ) -> ConsumerProcess:
        env = consumer_env(
            database_url=database_url,
            mqtt_host=host,
            mqtt_port=port,
            client_id=unique_client_id(name),
            group=unique_client_id("g"),
            chain_rpc_url=self.anvil_url,
            deployment_file=self.deployment_file,
            # Every forgery must get its row here (25 land on one topic within seconds): lift the
            # per-topic row budget for unsigned rejections (tested in test_rejection_rows.py).
            rejections_per_topic_burst=1000,
            **extra,
        )
        return ConsumerProcess(env, self.tmp / f"{name}.log")

    def assert_reconciled(self, counts: Counts, stats: PublishStats) -> None:
        assert stats.sent == len(self.messages) == self.valid + self.forged
        assert counts.packets == counts.readings == self.valid, counts
        assert counts.rejections == {"bad_signature": self.forged}, counts
        assert counts.repeated_keys == 0
        assert counts.outcomes == stats.sent


@pytest.fixture
async def scenario(
    w3: Any, deployment: Any, signer: Any, accounts: list, anvil_url: str, tmp_path: Path
) -> Scenario:
    fleet = make_fleet(DEVICES, [a.address for a in accounts[2:5]], seed=random.randrange(2**32))
    await RegistryClient(w3, deployment, signer).register_batch(
        [DeviceInput(d.device_id, d.pubkey, d.owner, d.hw_class, d.asserted_cell) for d in fleet]
    )
    deployment.save(tmp_path / "deployment.json")
    return Scenario(fleet, tmp_path / "deployment.json", anvil_url, tmp_path)


async def until_stored(dsn: str, n: int, timeout: float = 30.0) -> None:
    async def check() -> bool:
        counts = await try_counts(dsn)
        return counts is not None and counts.packets >= n

    await wait_for(check, timeout, f"{n} packets stored")


async def until_reconciled(
    dsn: str, sc: Scenario, worker: ConsumerProcess | None = None, timeout: float = 60.0
) -> Counts:
    async def check() -> Counts | None:
        counts = await try_counts(dsn)
        return counts if counts is not None and counts.outcomes >= len(sc.messages) else None

    try:
        await wait_for(check, timeout, "every message to have its outcome")
    except AssertionError as exc:
        log = f"\nworker log:\n{worker.log_tail(150)}" if worker is not None else ""
        raise AssertionError(f"{exc}; {len(sc.messages)} sent, now {await try_counts(dsn)}{log}") from None
    await asyncio.sleep(0.5)  # anything redelivered late must not add rows
    return await table_counts(dsn)


def report(name: str, started: float, counts: Counts, stats: PublishStats, metrics: dict[str, float]) -> None:
    print(
        f"\n{name}: {stats.sent} sent ({stats.retries} publish retries) → {counts.packets} stored + "
        f"{sum(counts.rejections.values())} rejected; restarted worker absorbed "
        f"{metrics.get('depin_duplicates_total', 0):.0f} duplicates, "
        f"{metrics.get('depin_db_retries_total', 0):.0f} db retries, "
        f"{metrics.get('depin_mqtt_reconnects_total', 0):.0f} reconnects; "
        f"{time.perf_counter() - started:.1f} s"
    )


async def test_sigkill_mid_stream_then_restart_loses_nothing(
    store: Store, pg_dsn: str, mosquitto: Any, scenario: Scenario
) -> None:
    started = time.perf_counter()
    w = scenario.worker(pg_dsn, mosquitto.host, mosquitto.port, "kill")
    try:
        await w.start()
        stats = PublishStats()
        pub = asyncio.create_task(
            publish_resilient(mosquitto.host, mosquitto.port, scenario.messages, rate_per_s=RATE, stats=stats)
        )
        await until_stored(pg_dsn, 300)
        w.kill()  # mid-stream: a batch in flight, more queued in the broker for the persistent session
        at_kill = await table_counts(pg_dsn)
        assert at_kill.packets < scenario.valid, "the stream ended before the kill"
        await w.start()  # same client id, clean_start False: the session's backlog is delivered
        await asyncio.wait_for(pub, 60)
        counts = await until_reconciled(pg_dsn, scenario, w)
        scenario.assert_reconciled(counts, stats)
        report("SIGKILL", started, counts, stats, await w.metrics())
        assert await w.stop() == 0, w.log_tail()
    finally:
        w.kill()
        await drop_session(mosquitto.host, mosquitto.port, w.env["DEPIN_MQTT_CLIENT_ID"])


@pytest.mark.parametrize("manual_ack", [False, True], ids=["auto-ack", "manual-ack"])
async def test_a_crash_between_receipt_and_commit_loses_packets_only_with_auto_ack(
    manual_ack: bool, store: Store, pg_dsn: str, mosquitto: Any, scenario: Scenario
) -> None:
    """The database is slow (the `packets` table is locked), 300 packets reach the worker, it is killed
    before any commit. With auto-ack the broker already considers them delivered: gone. With manual
    ack they are redelivered to the restarted worker and stored."""
    started = time.perf_counter()
    w = scenario.worker(pg_dsn, mosquitto.host, mosquitto.port, "ack", mqtt_manual_ack=manual_ack)
    messages = scenario.valid_messages[:300]
    locker = await asyncpg.connect(pg_dsn)
    try:
        await w.start()
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE packets IN EXCLUSIVE MODE")
        stats = await publish_resilient(mosquitto.host, mosquitto.port, messages)

        async def all_received() -> bool:
            return (await w.metrics()).get("depin_mqtt_pending_messages", 0) >= len(messages)

        await wait_for(all_received, 30, f"the worker to hold all {len(messages)} messages")
        await asyncio.sleep(0.3)  # auto-ack: let paho's PUBACKs reach the broker
        w.kill()
        await tx.rollback()
        assert (await table_counts(pg_dsn)).packets == 0

        await w.start()
        # A sentinel after the restart: the broker delivers a session's messages in order, so once it
        # is stored, whatever was still owed to this worker has been delivered too.
        dev = scenario.fleet[0]
        sentinel = (dev.topic, next_message(dev, time.time_ns() // 1_000_000))
        await publish_resilient(mosquitto.host, mosquitto.port, [sentinel])
        conn = await asyncpg.connect(pg_dsn)
        try:

            async def sentinel_stored() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM packets WHERE seq = $1 AND device_id = $2",
                        dev.seq,
                        dev.device_id,
                    )
                )

            await wait_for(sentinel_stored, 30, "the sentinel to be stored")
        finally:
            await conn.close()
        counts = await table_counts(pg_dsn)
        lost = len(messages) + 1 - counts.packets
        print(
            f"\n{'manual' if manual_ack else 'auto'}-ack crash: {stats.sent + 1} sent, "
            f"{counts.packets} stored, {lost} lost; {time.perf_counter() - started:.1f} s"
        )
        if manual_ack:
            assert lost == 0 and counts.repeated_keys == 0
        else:
            assert lost > 0, "auto-ack lost nothing: the regression test does not exercise the crash window"
        assert await w.stop() == 0, w.log_tail()
    finally:
        await locker.close()
        w.kill()
        await drop_session(mosquitto.host, mosquitto.port, w.env["DEPIN_MQTT_CLIENT_ID"])


async def test_postgres_stopped_mid_stream(mosquitto: Any, scenario: Scenario) -> None:
    """A PostgreSQL of this test's own (stopping the session's server would break other tests)."""
    started = time.perf_counter()
    async with embedded_postgres() as dsn:
        pool = await create_pool(dsn, max_size=2)
        try:
            await migrate(pool)
        finally:
            await pool.close()
        pg = await PostgresControl.of(dsn)
        w = scenario.worker(dsn, mosquitto.host, mosquitto.port, "pgdown")
        try:
            await w.start()
            stats = PublishStats()
            pub = asyncio.create_task(
                # At half the rate (a ~10 s stream): on a loaded machine the worker's start and its
                # first 300 commits took most of a 5 s stream, leaving no outage mid-stream to test.
                publish_resilient(
                    mosquitto.host, mosquitto.port, scenario.messages, rate_per_s=RATE / 2, stats=stats
                )
            )
            await until_stored(dsn, 300)
            await pg.stop()
            down = time.perf_counter()
            await asyncio.sleep(3)
            assert not pub.done(), "the stream ended during the outage: it did not span it"
            await pg.start()
            print(f"\nPostgreSQL down for {time.perf_counter() - down:.1f} s")
            await asyncio.wait_for(pub, 60)
            counts = await until_reconciled(dsn, scenario, w)
            scenario.assert_reconciled(counts, stats)
            metrics = await w.metrics()
            report("PostgreSQL outage", started, counts, stats, metrics)
            assert metrics.get("depin_db_retries_total", 0) > 0, (
                "no commit failed: the outage missed the stream"
            )
            assert await w.stop() == 0, w.log_tail()
        finally:
            w.kill()
            await drop_session(mosquitto.host, mosquitto.port, w.env["DEPIN_MQTT_CLIENT_ID"])


async def test_broker_restarted_mid_stream(
    store: Store, pg_dsn: str, scenario: Scenario, tmp_path: Path
) -> None:
    """A Mosquitto of this test's own, stopped gracefully (it saves sessions and queued messages) for
    2 s and started on the same port; worker and publisher reconnect on their own.

    One worker on a plain persistent subscription: Mosquitto 2.0.11 restores those from its
    persistence file, so what devices publish before the worker is back is queued for it. It does not
    restore `$share` subscriptions (README, "Broker restarts"), so N workers lose that gap."""
    started = time.perf_counter()
    async with start_mosquitto(tmp_path / "broker") as broker:
        w = scenario.worker(pg_dsn, broker.host, broker.port, "brk", mqtt_shared=False)
        try:
            await w.start()
            stats = PublishStats()
            pub = asyncio.create_task(
                publish_resilient(broker.host, broker.port, scenario.messages, rate_per_s=RATE, stats=stats)
            )
            await until_stored(pg_dsn, 300)
            await broker.stop()
            await asyncio.sleep(2)
            assert not pub.done(), "the stream ended during the outage: it did not span it"
            await broker.start()
            await asyncio.wait_for(pub, 60)
            counts = await until_reconciled(pg_dsn, scenario, w)
            scenario.assert_reconciled(counts, stats)
            metrics = await w.metrics()
            report("broker restart", started, counts, stats, metrics)
            assert metrics.get("depin_mqtt_reconnects_total", 0) >= 1
            assert stats.reconnects >= 1
            assert await w.stop() == 0, w.log_tail()
        finally:
            w.kill()


async def test_out_of_database_connections_mid_stream_is_retried_and_the_process_keeps_running(
    mosquitto: Any, scenario: Scenario, w3: Any, deployment: Any, signer: Any
) -> None:
    """Issue 11: `asyncpg.TooManyConnectionsError` used to end the process. A PostgreSQL of this test's
    own with max_connections = 20; mid-stream the test takes every slot (and terminates the service's
    backends, so its pool must open new ones and is refused) for 4 s, while a device registration
    makes the follower write too. The consumer retries its batch, the follower its sync, the API
    answers 503; afterwards everything reconciles exactly."""
    started = time.perf_counter()
    async with small_postgres(20) as dsn:
        pool = await create_pool(dsn, max_size=2)
        try:
            await migrate(pool)
        finally:
            await pool.close()
        w = scenario.worker(dsn, mosquitto.host, mosquitto.port, "pgfull")
        w.parts = "consume,follow,epochs,api"
        hog = ConnectionHog(dsn)
        try:
            await w.start()
            stats = PublishStats()
            first, rest = scenario.messages[:400], scenario.messages[400:]
            await publish_resilient(mosquitto.host, mosquitto.port, first, rate_per_s=RATE, stats=stats)
            await until_stored(dsn, 300)
            held = await hog.exhaust()
            full = time.perf_counter()
            # The rest of the stream arrives while the database is full: its commits are refused.
            pub = asyncio.create_task(
                publish_resilient(mosquitto.host, mosquitto.port, rest, rate_per_s=RATE, stats=stats)
            )
            # The follower has blocks to fold (and rows to write) while the database is full.
            extra = make_fleet(1, [scenario.fleet[0].owner], seed=random.randrange(2**32))[0]
            await RegistryClient(w3, deployment, signer).register(
                extra.device_id, extra.pubkey, extra.owner, extra.hw_class, extra.asserted_cell
            )
            async with aiohttp.ClientSession() as http:

                async def api_refused() -> bool:
                    async with http.get(f"{w.url}/v1/stats") as r:
                        return r.status == 503 and r.headers.get("Retry-After") == "1"

                await wait_for(api_refused, 10, "GET /v1/stats to answer 503")
                status, ready = await w.readyz()
                assert status == 503 and "database" in ready["failing"], ready
                await asyncio.sleep(max(0.0, 4 - (time.perf_counter() - full)))
                assert (await table_counts_or_none(dsn)) is None  # nobody gets a connection now
                assert w.proc is not None and w.proc.poll() is None, w.log_tail()
                assert await hog.others() == 0  # the service could not get a connection back
            await hog.release()
            print(f"\nPostgreSQL full ({held} connections held) for {time.perf_counter() - full:.1f} s")
            await asyncio.wait_for(pub, 60)
            counts = await until_reconciled(dsn, scenario, w)
            scenario.assert_reconciled(counts, stats)
            metrics = await w.metrics()
            report("out of connections", started, counts, stats, metrics)
            assert metrics.get("depin_db_retries_total", 0) > 0, "no commit was refused: missed the stream"
            assert metrics.get("depin_api_db_unavailable_total", 0) > 0
            assert metrics.get("depin_registry_sync_failures_total", 0) > 0
            await wait_for(lambda: _ready(w), 30, "/readyz 200 after the database has room again")
            log = w.log_file.read_text()
            assert "TooManyConnectionsError" in log or "too many clients" in log
            assert await w.stop() == 0, w.log_tail()
        finally:
            await hog.release()
            w.kill()
            await drop_session(mosquitto.host, mosquitto.port, w.env["DEPIN_MQTT_CLIENT_ID"])


async def table_counts_or_none(dsn: str) -> Counts | None:
    try:
        return await try_counts(dsn)
    except asyncpg.TooManyConnectionsError:
        return None


async def _ready(w: ConsumerProcess) -> bool:
    return (await w.readyz())[0] == 200
