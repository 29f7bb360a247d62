"""Hourly rollups (migration 014) against a real PostgreSQL: aggregates and usage answered from the
rollups equal the raw path's before any refresh, after it, and after late and new batches; a batch
committing inside a refresh keeps its hour dirty; retention drops a day's rollup rows with its
partition; the rollup statement reads no readings partition sequentially."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import h3
import pytest

from devices.protocol.model import Reading
from ingest.adapters.db import create_pool, migrate
from ingest.adapters.store import rollups
from ingest.adapters.store.ingest import IngestStore
from ingest.adapters.store.partitions import PartitionStore
from ingest.adapters.store.queries import AggregateRow, QueryStore
from ingest.adapters.store.rollups import RollupStore
from ingest.core import h3cells, rollup_rules
from ingest.core.readfilter import ReadingFilter, parse_where
from ingest.model import AcceptedPacket
from ingest.rollups import refresh_once
from tests.fixtures_pg import Store
from tests.integration.test_api_query import Explaining, scans

pytestmark = pytest.mark.integration
HOUR = 3_600_000
NOW = time.time_ns() // 1_000_000
T0 = (NOW // HOUR - 8) * HOUR  # 8 hours ago, on the hour: hours T0 … T0+6h get readings
CENTRE = (52.5, 13.4)
P5 = h3.str_to_int(h3.latlng_to_cell(*CENTRE, 5))
CLOCK = (T0 - 5 * HOUR, 2 * HOUR)  # epochs of whole hours


class Station:
    def __init__(self, i: int, rnd: random.Random) -> None:
        self.device = hashlib.sha256(b"station" + i.to_bytes(4, "big")).digest()
        # Inside P5 and around it; air at res 8, weather at res 9, a coarse class at res 6.
        self.lat = CENTRE[0] + rnd.uniform(-0.1, 0.1)
        self.lon = CENTRE[1] + rnd.uniform(-0.15, 0.15)
        self.kind, res = [("air", 8), ("weather", 9), ("coarse", 6)][i % 3]
        self.cell = h3.str_to_int(h3.latlng_to_cell(self.lat, self.lon, res))
        self.seq = 0


def vals(rnd: random.Random) -> dict[str, Any]:
    """pm25 a number most of the time, else text or missing; temp a number; label always text."""
    v: dict[str, Any] = {"label": "x", "temp": round(rnd.uniform(-5, 30), 2)}
    roll = rnd.random()
    if roll < 0.8:
        v["pm25"] = round(rnd.uniform(0, 80), 3) if roll > 0.1 else rnd.randint(0, 9)
    elif roll < 0.9:
        v["pm25"] = "n/a"
    return v


def packets(stations: list[Station], rnd: random.Random, hours: list[int], n: int) -> list[AcceptedPacket]:
    """`n` packets of 1–5 readings from random stations, each packet within one of `hours`."""
    out = []
    for _ in range(n):
        s = rnd.choice(stations)
        s.seq += 1
        start = rnd.choice(hours) + rnd.randrange(HOUR - 10_000)
        readings = tuple(
            Reading(start + i * 1000, s.lat, s.lon, cast(Any, vals(rnd))) for i in range(rnd.randint(1, 5))
        )
        digest = hashlib.sha256(s.device + s.seq.to_bytes(8, "big")).digest()
        out.append(
            AcceptedPacket(
                s.device,
                s.seq,
                s.kind,
                digest,
                NOW,
                readings,
                (s.cell,) * len(readings),
                (0,) * len(readings),
            )
        )
    return out


async def write(store: Store, pkts: list[AcceptedPacket]) -> None:
    for i in range(0, len(pkts), 200):
        await store.write_batch(pkts[i : i + 200], [])


QUERIES: list[tuple[str, dict[str, str], int | None, str]] = [
    ("res-5 region, hourly at res 7", {"cell": format(P5, "x")}, 7, "hour"),
    ("res-5 region, daily at res 5", {"cell": format(P5, "x")}, 5, "day"),
    ("res-5 region, hourly at res 6, air", {"cell": format(P5, "x"), "kind": "air"}, 6, "hour"),
    (
        "res-6 cell, hourly at res 7",
        {"cell": format(h3cells.parent(h3.str_to_int(h3.latlng_to_cell(*CENTRE, 9)), 6), "x")},
        7,
        "hour",
    ),
    ("everywhere, hourly at res 4", {}, 4, "hour"),
]


def close(rollup: list[AggregateRow], raw: list[AggregateRow]) -> None:
    """Same groups in the same order; count, min, max exact, avg to rounding (another summing order)."""
    assert [r._replace(avg=0.0) for r in rollup] == [r._replace(avg=0.0) for r in raw]
    assert [r.avg for r in rollup] == pytest.approx([r.avg for r in raw], rel=1e-12)


async def compare(store: Store, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every query of QUERIES (and its usage), rollup path vs raw path; returns the rows compared."""
    queries = QueryStore(store.pool)
    used = 0
    real_aggregates, real_usage = rollups.aggregates, rollups.usage

    async def counting_aggregates(*a: Any, **k: Any) -> Any:
        nonlocal used
        used += 1
        return await real_aggregates(*a, **k)

    async def counting_usage(*a: Any, **k: Any) -> Any:
        nonlocal used
        used += 1
        return await real_usage(*a, **k)

    compared = 0
    for value in ("pm25", "temp", "label"):
        for label, q, res, bucket in QUERIES:
            f = parse_where(q, need_place=False).between(T0 - HOUR, T0 + 8 * HOUR)
            with monkeypatch.context() as m:
                m.setattr(rollups, "aggregates", counting_aggregates)
                m.setattr(rollups, "usage", counting_usage)
                got = await queries.aggregates(
                    f, res=res, by_device=False, bucket=bucket, value=value, max_rows=10_000
                )
                got_usage = await queries.usage(f, *CLOCK)
            with monkeypatch.context() as m:
                m.setattr(rollup_rules, "aggregate_eligible", lambda *a, **k: False)
                m.setattr(rollup_rules, "usage_eligible", lambda *a, **k: False)
                want = await queries.aggregates(
                    f, res=res, by_device=False, bucket=bucket, value=value, max_rows=10_000
                )
                want_usage = await queries.usage(f, *CLOCK)
            close(got, want)
            assert got_usage == want_usage, label
            assert (value == "label") == (not want), (label, value)  # text values are never aggregated
            compared += len(want)
    assert used == 2 * 3 * len(QUERIES)  # every one of them was answered from the rollups
    return compared


@pytest.fixture
def stations() -> list[Station]:
    rnd = random.Random(7)
    return [Station(i, rnd) for i in range(90)]


async def test_the_rollup_path_equals_the_raw_path(
    store: Store, stations: list[Station], monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd = random.Random(11)
    rollup = RollupStore(store.pool)
    hours = [T0 + h * HOUR for h in range(6)]
    await write(store, packets(stations, rnd, hours, 1500))
    inside = sum(1 for s in stations if h3cells.res_of(s.cell) >= 5 and h3cells.parent(s.cell, 5) == P5)
    assert 15 < inside < 75  # the region holds some stations, not all
    assert sorted(h for h, _ in await rollup.dirty()) == hours

    assert await compare(store, monkeypatch) > 100  # nothing refreshed: every hour read raw

    cleaned, more = await refresh_once(rollup, NOW)
    assert (cleaned, more) == (6, False)
    assert await rollup.dirty() == []
    assert await store.pool.fetchval("SELECT count(*) FROM readings_hourly") > 500
    await compare(store, monkeypatch)  # every hour from the rollups

    # Late readings into the oldest hour and a new hour: those two read raw, the rest rolled up.
    await write(store, packets(stations, rnd, [T0, T0 + 6 * HOUR], 300))
    assert sorted(h for h, _ in await rollup.dirty()) == [T0, T0 + 6 * HOUR]
    await compare(store, monkeypatch)
    assert (await refresh_once(rollup, NOW))[0] == 2
    await compare(store, monkeypatch)


class PausingPool:
    """A pool stand-in whose connections run `pause` just before the refresh cleans its hour (the
    DELETE from readings_hourly_dirty), i.e. after the hour's rows were recomputed."""

    def __init__(self, pool: Any, pause: Callable[[], Awaitable[None]]) -> None:
        self.pool, self.pause = pool, pause

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn:
            yield PausingConn(conn, self.pause)


class PausingConn:
    def __init__(self, conn: Any, pause: Callable[[], Awaitable[None]]) -> None:
        self.conn, self.pause = conn, pause

    def transaction(self) -> Any:
        return self.conn.transaction()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.conn.fetchval(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self.conn.fetch(sql, *args)

    async def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("DELETE FROM readings_hourly_dirty"):
            await self.pause()
        return await self.conn.execute(sql, *args)


@pytest.mark.parametrize("writer", ["same", "other"])
async def test_a_batch_committed_during_a_refresh_keeps_its_hour_dirty(
    store: Store, stations: list[Station], monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """The batch commits after the refresh recomputed the hour and before it cleans it: the hour must
    stay dirty (the recompute did not see the batch), and answers stay equal to the raw path — whether
    the late batch bumps the same writer's dirty row or adds another worker's (another shard)."""
    rnd = random.Random(12)
    await write(store, packets(stations, rnd, [T0 + 2 * HOUR], 200))
    late = packets(stations, rnd, [T0 + 2 * HOUR], 50)
    other = IngestStore(store.pool)
    other._shard = (store._shard + 1) % 64  # another worker's row of the hour

    async def batch_meanwhile() -> None:
        if writer == "same":
            await write(store, late)
        else:
            await other.write_batch(late, [])

    assert not await RollupStore(PausingPool(store.pool, batch_meanwhile)).refresh(T0 + 2 * HOUR)  # type: ignore[arg-type]
    assert [h for h, _ in await RollupStore(store.pool).dirty()] == [T0 + 2 * HOUR]
    assert await store.pool.fetchval("SELECT count(*) FROM readings_hourly") > 0  # rows of the recompute
    await compare(store, monkeypatch)
    assert await RollupStore(store.pool).refresh(T0 + 2 * HOUR)
    await compare(store, monkeypatch)


async def test_dropping_a_days_partition_drops_its_rollup_rows(store: Store, stations: list[Station]) -> None:
    rnd = random.Random(13)
    day = NOW // 86_400_000 - 2
    hour = day * 86_400_000 + 5 * HOUR
    await write(store, packets(stations, rnd, [hour, T0], 50))
    rollup = RollupStore(store.pool)
    await refresh_once(rollup, NOW)
    count = "SELECT count(*) FROM readings_hourly WHERE hour = to_timestamp($1 / 1000.0)"
    assert await store.pool.fetchval(count, hour) > 0
    name = time.strftime("readings_p%Y%m%d", time.gmtime(day * 86_400))
    assert await PartitionStore(store.pool).drop_partition(name)
    assert await store.pool.fetchval(count, hour) == 0
    assert await store.pool.fetchval(count, T0) > 0  # other days keep theirs


async def test_the_rollup_statements_use_indexes(store: Store, stations: list[Station]) -> None:
    """A week of readings, some hours dirty: the aggregate and usage statements read readings only by
    index (readings_block_ts) and the rollups by their key."""
    rnd = random.Random(14)
    start = (NOW // HOUR - 24 * 6) * HOUR
    week = [start + h * HOUR for h in range(0, 24 * 6, 2)]
    await write(store, packets(stations, rnd, week, 3000))
    await refresh_once(RollupStore(store.pool), NOW)
    await write(store, packets(stations, rnd, week[-3:], 100))  # three dirty hours
    await store.pool.execute("ANALYZE")
    explaining = Explaining(store.pool)
    queries = QueryStore(explaining)  # type: ignore[arg-type]
    full = {
        r["p"] for r in await store.pool.fetch("SELECT DISTINCT tableoid::regclass::text AS p FROM readings")
    }
    assert len(full) >= 6
    for q in ({"cell": format(P5, "x")}, {"cell": format(h3cells.parent(stations[0].cell, 6), "x")}):
        f: ReadingFilter = parse_where(q).between(start, (NOW // HOUR + 1) * HOUR)
        await queries.aggregates(f, res=7, by_device=False, bucket="hour", value="pm25", max_rows=10_000)
        await queries.usage(f, *CLOCK)
    assert len(explaining.plans) == 4
    for sql, plan in explaining.plans:
        assert "readings_hourly" in sql
        nodes = scans(plan[0]["Plan"])
        seq = [rel for node, rel in nodes if node == "Seq Scan" and (rel in full or rel == "readings_hourly")]
        assert not seq, f"sequential scan of {seq} in\n{sql}\n{json.dumps(plan, indent=1)[:3000]}"


async def test_migration_014_marks_the_hours_of_stored_readings_dirty(pg_dsn: str, tmp_path: Path) -> None:
    from ingest.adapters.db import MIGRATIONS_DIR

    for p in MIGRATIONS_DIR.glob("*.sql"):
        if p.name < "014":
            shutil.copy(p, tmp_path / p.name)
    pool = await create_pool(pg_dsn)
    try:
        await migrate(pool, tmp_path)
        await pool.executemany(
            """INSERT INTO readings (ts, device_id, seq, idx, lat, lon, cell, kind, vals)
               VALUES (to_timestamp($1 / 1000.0), '\\x01', $2, 0, 0, 0, 1, 'air', '{}')""",
            [(T0 + 5, 1), (T0 + HOUR - 1, 2), (T0 + 3 * HOUR, 3)],
        )
        assert (await migrate(pool)).applied[0] == "014_readings_hourly.sql"  # then any later ones
        assert sorted(h for h, _ in await RollupStore(pool).dirty()) == [T0, T0 + 3 * HOUR]
    finally:
        await pool.close()
