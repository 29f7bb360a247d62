"""Readings partition upkeep on real PostgreSQL (native partitioning): one pass of the consume part's
retention task creates the coming days' partitions, drops an old one only when it is past
DEPIN_READINGS_RETENTION_DAYS AND its epoch is sealed, and rebuilds the indexes of days over for
DEPIN_READINGS_COMPACT_AFTER_DAYS once; `depin run` does it from its environment."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ingest.adapters.mqtt import drop_session
from ingest.adapters.store.partitions import PartitionStore
from ingest.retention import compact_partitions, maintain_partitions
from simulator.fleet import make_fleet
from simulator.publish import unique_client_id
from tests.fixtures_pg import Store
from tests.integration.test_workers import register
from tests.procs import ConsumerProcess, consumer_env, wait_for

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def _now() -> int:
    return time.time_ns() // 1_000_000


def _name(day: int) -> str:
    return "readings_p" + datetime.fromtimestamp(day * DAY_MS / 1000, UTC).strftime("%Y%m%d")


def _dropped() -> float:
    return REGISTRY.get_sample_value("depin_readings_partitions_total", {"action": "dropped"}) or 0.0


async def test_one_pass_creates_ahead_and_drops_only_past_retention_and_sealed(store: Store) -> None:
    parts = PartitionStore(store.pool)
    now = _now()
    today = now // DAY_MS
    assert await parts.native()
    await parts.create_days(today - 10, today - 9)
    await parts.create_days(today - 5, today - 5)
    old = today - 10
    await store.pool.execute(  # a reading in the oldest day: it goes with its partition
        "INSERT INTO readings (ts, device_id, seq, idx, lat, lon, cell, kind)"
        " VALUES ($1, '\\x01', 1, 0, 0, 0, 1, 'gps')",
        datetime.fromtimestamp((old * DAY_MS + 1000) / 1000, UTC),
    )

    created, dropped = await maintain_partitions(parts, 2, 0, now)
    assert created == [_name(d) for d in range(today, today + 3)] and dropped == []
    assert set(await parts.partition_days()) == {old, old + 1, today - 5, today, today + 1, today + 2}
    assert await maintain_partitions(parts, 2, 0, now) == ([], [])  # idempotent

    # Past the retention but nothing sealed yet: kept (the rewards of open epochs need them).
    assert await maintain_partitions(parts, 2, 7, now) == ([], [])
    # Sealed into the middle of day old+1: only the day wholly before the seal goes.
    before = _dropped()
    await store.seal_epoch(1, (old + 1) * DAY_MS + DAY_MS // 2)
    assert await maintain_partitions(parts, 2, 7, now) == ([], [_name(old)])
    assert _dropped() == before + 1
    assert await store.pool.fetchval("SELECT count(*) FROM readings") == 0
    # Sealed up to now: old+1 goes too, but today−5 is within the 7 days' retention.
    await store.seal_epoch(2, today * DAY_MS)
    assert await maintain_partitions(parts, 2, 7, now) == ([], [_name(old + 1)])
    assert set(await parts.partition_days()) == {today - 5, today, today + 1, today + 2}
    # Retention 0 keeps everything, sealed or not.
    assert await maintain_partitions(parts, 2, 0, now + 30 * DAY_MS) == (
        [_name(d) for d in range(today + 30, today + 33)],
        [],
    )


async def _index_bytes(store: Store, partition: str) -> int:
    return int(
        await store.pool.fetchval(
            "SELECT sum(pg_relation_size(indexrelid)) FROM pg_index WHERE indrelid = $1::regclass", partition
        )
    )


async def test_a_day_over_gets_its_indexes_rebuilt_packed_once(store: Store) -> None:
    """Readings written in time order from many places leave the block index's pages half full; the
    day's compaction rebuilds it smaller, once, and the rows are all still found through it."""
    parts = PartitionStore(store.pool)
    now = _now()
    day = now // DAY_MS - 3
    await parts.create_days(day, day + 1)
    rnd = random.Random(4)
    cells = [int(f"89{rnd.randrange(16**13):013x}", 16) & ~0xF for _ in range(500)]  # many blocks
    await store.pool.execute(
        """INSERT INTO readings (ts, device_id, seq, idx, lat, lon, cell, kind)
           SELECT to_timestamp(($1::bigint + g * 1000) / 1000.0), int8send(g % 500), g, 0, 0, 0,
                  ($2::bigint[])[1 + g % 500], 'gps'
           FROM generate_series(0, 59999) g""",
        day * DAY_MS,
        cells,
    )
    before = await _index_bytes(store, _name(day))
    assert await compact_partitions(parts, 0, now) == []  # 0: off
    assert await compact_partitions(parts, 3, now) == []  # not over for 3 days yet
    assert await compact_partitions(parts, 2, now) == [_name(day)]
    compacted = await parts.compacted()
    assert _name(day) in compacted and _name(day + 1) not in compacted
    after = await _index_bytes(store, _name(day))
    assert after < 0.8 * before, (before, after)
    assert await compact_partitions(parts, 2, now) == []  # once
    block = await store.pool.fetchval(
        "SELECT count(*) FROM readings WHERE depin_cell7(cell) = depin_cell7($1) AND ts >= $2",
        cells[7],
        datetime.fromtimestamp(day * DAY_MS / 1000, UTC),
    )
    assert block == 120
    await store.seal_epoch(1, now)
    _, dropped = await maintain_partitions(parts, 0, 1, now)
    assert dropped == [_name(day), _name(day + 1)]
    assert await parts.compacted() == set()  # its record goes with the partition


async def test_depin_run_keeps_partitions_from_its_environment(
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
    """`depin run` as an OS process: DEPIN_READINGS_PARTITIONS_AHEAD_DAYS and
    DEPIN_READINGS_RETENTION_DAYS drive its consume part's upkeep."""
    fleet = make_fleet(1, [accounts[2].address], seed=random.randrange(2**32))
    await register(w3, deployment, signer, fleet)
    deployment.save(tmp_path / "deployment.json")
    parts = PartitionStore(store.pool)
    today = _now() // DAY_MS
    await parts.create_days(today - 20, today - 19)
    await store.seal_epoch(1, (today - 19) * DAY_MS)  # day today−19 not wholly sealed: kept
    env = consumer_env(
        database_url=pg_dsn,
        mqtt_host=mosquitto.host,
        mqtt_port=mosquitto.port,
        client_id=unique_client_id("parts"),
        group=unique_client_id("g"),
        chain_rpc_url=anvil_url,
        deployment_file=tmp_path / "deployment.json",
        rejections_prune_interval_s=0.5,
        readings_partitions_ahead_days=3,
        readings_retention_days=14,
        readings_compact_after_days=1,
    )
    worker = ConsumerProcess(env, tmp_path / "worker.log")
    try:
        await worker.start()

        async def upkept() -> dict[str, float]:
            m = await worker.metrics()
            return m if m.get('depin_readings_partitions_total{action="dropped"}') == 1 else {}

        m = await wait_for(upkept, 15, "the old partition dropped")
        assert m['depin_readings_partitions_total{action="created"}'] == 4
        compacted = await wait_for(parts.compacted, 15, "the kept old day compacted")
        assert compacted == {_name(today - 19)}
        assert set(await parts.partition_days()) == {today - 19, *range(today, today + 4)}
        assert f"dropped readings partition {_name(today - 20)}" in worker.log_tail(200)
        assert await worker.stop() == 0, worker.log_tail()
    finally:
        worker.kill()
        await drop_session(mosquitto.host, mosquitto.port, env["DEPIN_MQTT_CLIENT_ID"])
    conn = await asyncpg.connect(pg_dsn)
    try:  # a DROP, not a DELETE: the table itself is gone
        assert await conn.fetchval("SELECT to_regclass($1)", _name(today - 20)) is None
    finally:
        await conn.close()
