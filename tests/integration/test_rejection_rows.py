"""Rejection rows are bounded: unsigned garbage on a device's topic gets rows only under a per-topic
budget (the rest is counted in depin_rejections_unrecorded_total), the device's own signed rejections
are always recorded and stay on the first page of `GET /v1/devices/{id}/rejections`, each device keeps
at most N unsigned rows, and rows past the retention are deleted in batches. The consumer's real code
(judge → budget → store) on PostgreSQL, and the real API over HTTP."""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from devices.protocol.model import Reason
from ingest.adapters.mqtt import MqttConfig, Received, drop_session
from ingest.api.app import create_app
from ingest.consumer import Consumer
from ingest.core.rejection_budget import UNSIGNED, BudgetConfig, RejectionBudget
from ingest.model import RejectedMessage
from ingest.retention import prune_once
from ingest.service import serve_api
from simulator import cheaters
from simulator.fleet import SimDevice, device_record, make_fleet, next_message
from simulator.publish import unique_client_id
from tests.fixtures_pg import Store
from tests.integration.test_workers import register
from tests.procs import ConsumerProcess, consumer_env, publish_resilient, table_counts, wait_for

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def _now() -> int:
    return time.time_ns() // 1_000_000


def _consumer(store: Store, fleet: list[SimDevice], budget: BudgetConfig) -> Consumer:
    records = {d.device_id: device_record(d) for d in fleet}
    return Consumer(MqttConfig(), store, records.get, rejection_budget=RejectionBudget(budget))


def _batch(items: list[tuple[str, bytes]]) -> list[Received]:
    now = _now()
    return [Received(topic, payload, mid, 1, now) for mid, (topic, payload) in enumerate(items, 1)]


def _unrecorded(reason: str) -> float:
    return REGISTRY.get_sample_value("depin_rejections_unrecorded_total", {"reason": reason}) or 0.0


@asynccontextmanager
async def _api(store: Store) -> AsyncIterator[str]:
    async def ready() -> dict[str, Any]:
        return {"ready": True}

    async with serve_api(create_app(store, ready, max_rows=10_000), "127.0.0.1", 0) as url:
        yield url


async def _device_rejections(url: str, dev: SimDevice) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/devices/{dev.device_id.hex()}/rejections") as resp,
    ):
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["rejections"])


async def test_garbage_on_a_topic_is_budgeted_and_signed_rejections_stay_visible(store: Store) -> None:
    a, b = fleet = make_fleet(2, ["0x" + "a1" * 20], seed=random.randrange(2**32))
    consumer = _consumer(store, fleet, BudgetConfig(per_topic_per_min=10, per_topic_burst=20))
    now = _now()
    # a's own signed rejections first (clock_skew: readings 2 minutes ahead), so garbage is newer.
    signed = [(a.topic, next_message(a, now + 120_000 + i * 1000)) for i in range(3)]
    result = await consumer.handle(_batch(signed))
    assert result.rejections == 3
    before = {r: _unrecorded(r) for r in (Reason.MALFORMED, Reason.BAD_SIGNATURE)}

    # The flood: 6,000 unsigned messages on a's topic (random bytes and forgeries), in batches as the
    # consumer reads them, plus one clean packet of b's in every batch.
    total_garbage = 0
    for k in range(6):
        junk = [(a.topic, os.urandom(64)) for _ in range(900)]
        junk += [cheaters.forged(a, now) for _ in range(100)]
        total_garbage += len(junk)
        # forged() makes the same bytes each time within a ms: count distinct digests only for rows.
        await consumer.handle(_batch([*junk, (b.topic, next_message(b, now - 10_000 + k * 1000))]))

    counts = await store.counts()
    rows = counts.rejections
    # Every rejection counted; only the topic's burst (20) of unsigned ones got a row.
    assert consumer.stats.rejected["clock_skew"] == 3
    assert consumer.stats.rejected["malformed"] + consumer.stats.rejected["bad_signature"] == total_garbage
    assert rows.get("malformed", 0) + rows.get("bad_signature", 0) <= 20, rows
    assert rows["clock_skew"] == 3
    assert counts.packets == 6  # b's packets were stored meanwhile
    unrecorded = sum(_unrecorded(r) - before[r] for r in before)
    assert unrecorded >= total_garbage - 20

    # The owner still sees a's own signed rejections on the first page, behind the newer garbage.
    async with _api(store) as url:
        page = await _device_rejections(url, a)
    reasons = [r["reason"] for r in page]
    assert reasons.count("clock_skew") == 3, reasons
    assert len(page) <= 23


async def test_each_device_keeps_at_most_n_unsigned_rows_and_its_signed_ones(store: Store) -> None:
    """A generous budget (or many workers, each with its own) can still let a topic's garbage pile up
    over days: the pruner trims each device's unsigned rows to its newest N, never a signed one."""
    (a,) = fleet = make_fleet(1, ["0x" + "a1" * 20], seed=random.randrange(2**32))
    consumer = _consumer(store, fleet, BudgetConfig(per_topic_burst=10_000, total_per_min=10_000))
    now = _now()
    await consumer.handle(_batch([(a.topic, next_message(a, now + 120_000))]))  # clock_skew, signed
    await consumer.handle(_batch([(a.topic, os.urandom(40)) for _ in range(500)]))
    assert (await store.counts()).rejections == {"clock_skew": 1, "malformed": 500}

    async with _api(store) as url:
        crowded = [r["reason"] for r in await _device_rejections(url, a)]
        assert "clock_skew" not in crowded  # 100 newest: all garbage — what the trim is for
        pruned = REGISTRY.get_sample_value("depin_rejections_pruned_total", {"why": "trimmed"}) or 0.0
        assert await prune_once(store, 7 * DAY_MS, 50, _now()) == (0, 450)
        assert REGISTRY.get_sample_value("depin_rejections_pruned_total", {"why": "trimmed"}) == pruned + 450
        page = [r["reason"] for r in await _device_rejections(url, a)]
    assert page.count("malformed") == 50 and page.count("clock_skew") == 1
    assert await prune_once(store, 7 * DAY_MS, 50, _now()) == (0, 0)  # nothing more to do


async def test_rows_past_the_retention_are_deleted_in_batches(store: Store) -> None:
    now = _now()

    def row(i: int, age_days: float, reason: Reason) -> RejectedMessage:
        return RejectedMessage(
            os.urandom(32), bytes([i % 7]) * 32, i, reason, "", now - int(age_days * DAY_MS), "t"
        )

    old = [row(i, 8, Reason.RATE_LIMITED if i % 2 else Reason.MALFORMED) for i in range(25)]
    recent = [row(i, 6.9, Reason.CLOCK_SKEW) for i in range(5)]
    await store.write_batch([], old + recent)
    expired, trimmed = await store.prune_rejections(now - 7 * DAY_MS, sorted(UNSIGNED), 50, batch=4)
    assert (expired, trimmed) == (25, 0)  # 7 statements of ≤ 4 rows
    assert (await store.counts()).rejections == {"clock_skew": 5}


async def test_depin_run_budgets_garbage_and_prunes_expired_rows(
    store: Store,
    pg_dsn: str,
    anvil_url: str,
    w3: Any,
    deployment: Any,
    signer: Any,
    accounts: list,
    mosquitto: Any,
    tmp_path: Path,
) -> None:
    """The wiring, as an OS process (`depin run --parts consume,api`) on Mosquitto: the budget comes
    from DEPIN_REJECTIONS_*, and the consume part prunes expired rows by itself, and the state rows of
    devices silent for DEPIN_DEVICE_STATE_IDLE_DAYS (default 30)."""
    (a,) = fleet = make_fleet(1, [accounts[2].address], seed=random.randrange(2**32))
    await register(w3, deployment, signer, fleet)
    deployment.save(tmp_path / "deployment.json")
    now = _now()
    expired = [
        RejectedMessage(os.urandom(32), a.device_id, i, Reason.RATE_LIMITED, "", now - 8 * DAY_MS, a.topic)
        for i in range(30)
    ]
    await store.write_batch([], expired)
    silent, heard = os.urandom(32), os.urandom(32)
    for device, days in ((silent, 31), (heard, 29)):
        await store.pool.execute(
            "INSERT INTO device_state (device_id, touched_at) VALUES ($1, now() - make_interval(days => $2))",
            device,
            days,
        )
    env = consumer_env(
        database_url=pg_dsn,
        mqtt_host=mosquitto.host,
        mqtt_port=mosquitto.port,
        client_id=unique_client_id("rows"),
        group=unique_client_id("g"),
        chain_rpc_url=anvil_url,
        deployment_file=tmp_path / "deployment.json",
        rejections_per_topic_burst=5,
        rejections_prune_interval_s=0.5,
    )
    worker = ConsumerProcess(env, tmp_path / "worker.log")
    try:
        await worker.start()
        garbage = [(a.topic, os.urandom(50)) for _ in range(300)]
        signed = (a.topic, next_message(a, _now() + 120_000))  # clock_skew
        await publish_resilient(mosquitto.host, mosquitto.port, [*garbage, signed])

        async def handled() -> bool:
            return (await worker.metrics()).get("depin_received_total", 0.0) >= 301

        await wait_for(handled, 30, "301 messages handled")

        async def pruned() -> dict[str, float]:
            m = await worker.metrics()
            return m if m.get('depin_rejections_pruned_total{why="expired"}') == 30 else {}

        m = await wait_for(pruned, 10, "the 30 expired rows pruned")
        assert m["depin_device_state_pruned_total"] == 1
        kept = {bytes(r[0]) for r in await store.pool.fetch("SELECT device_id FROM device_state")}
        assert heard in kept and silent not in kept
        rows = (await table_counts(pg_dsn)).rejections
        # 5 rows of garbage (the burst; + at most 1 refilled at 10/min), the signed one, no expired one.
        assert rows["clock_skew"] == 1 and 5 <= rows["malformed"] <= 6 and "rate_limited" not in rows, rows
        assert m['depin_rejected_total{reason="malformed"}'] == 300
        assert m['depin_rejections_unrecorded_total{reason="malformed"}'] == 300 - rows["malformed"]
        assert await worker.stop() == 0, worker.log_tail()
    finally:
        worker.kill()
        await drop_session(mosquitto.host, mosquitto.port, env["DEPIN_MQTT_CLIENT_ID"])
