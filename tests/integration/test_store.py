"""Store and migrations against a real PostgreSQL (one embedded server per session, a database per test)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest

from devices.protocol.model import DeviceRecord, Media, Reading, Reason
from ingest.adapters.db import create_pool, embedded_postgres, migrate
from ingest.adapters.store import ensure_partitions
from ingest.adapters.store.ingest import IngestStore
from ingest.adapters.store.rows import (
    DAY_MS,
    SEAL_LOCK_KEY,
    CellReward,
    DeviceReward,
    OwnerReward,
    Totals,
    ms_to_dt,
)
from ingest.core import h3cells
from ingest.core.rules import FLAG_MEDIA_REUSE
from ingest.model import AcceptedPacket, RejectedMessage
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration

ALL_MIGRATIONS = [
    "001_core.sql",
    "002_readings.native.sql",
    "003_epochs.sql",
    "004_media.sql",
    "005_epoch_seal.sql",
    "006_hw_classes.sql",
    "007_rejections_retention.sql",
    "008_api_counters.sql",
    "009_api_keys.sql",
    "010_packet_envelopes.sql",
    "011_query_polygon.sql",
    "012_epoch_summary.sql",
    "013_readings_blocks.sql",
    "014_readings_hourly.sql",
    "015_epoch_refused.sql",
    "016_scoring.sql",
    "017_market.sql",
    "018_settlement.sql",
    "019_manifest_pages.sql",
    "021_usage_demand.sql",
    "022_distributor_mirror.sql",
    "023_device_state.sql",
    "024_device_state_touched.sql",
]
CELL_A = 0x8928308280FFFFF  # real res-9 H3 indexes
CELL_B = 0x8928308280BFFFF


def dev(n: int) -> bytes:
    return hashlib.sha256(b"device" + bytes([n])).digest()


def now_ms() -> int:
    return int(time.time() * 1000)


def packet(
    device: bytes,
    seq: int,
    *,
    n: int = 3,
    ts0: int | None = None,
    step_ms: int = 1000,
    variant: bytes = b"",
    flags: tuple[int, ...] | None = None,
    cells: tuple[int, ...] | None = None,
    kind: str = "weather",
    readings: tuple[Reading, ...] | None = None,
) -> AcceptedPacket:
    ts0 = now_ms() if ts0 is None else ts0
    if readings is None:
        readings = tuple(
            Reading(
                ts_ms=ts0 + i * step_ms,
                lat=52.5 + i * 1e-4,
                lon=13.4,
                vals={"temperature_c": 20.5 + i},
                acc=3.5,
                alt=34.0,
            )
            for i in range(n)
        )
    payload_digest = hashlib.sha256(device + seq.to_bytes(8, "big") + variant).digest()
    return AcceptedPacket(
        device_id=device,
        seq=seq,
        kind=kind,
        payload_digest=payload_digest,
        received_ms=now_ms(),
        readings=readings,
        cells=cells if cells is not None else (CELL_A,) * len(readings),
        flags=flags if flags is not None else (0,) * len(readings),
        message_digest=hashlib.sha256(b"msg" + payload_digest).digest(),
    )


def rejection(i: int, reason: Reason = Reason.BAD_SIGNATURE, device: bytes | None = None) -> RejectedMessage:
    return RejectedMessage(
        message_digest=hashlib.sha256(b"rej" + i.to_bytes(4, "big")).digest(),
        device_id=device,
        seq=i,
        reason=reason,
        detail=f"test {i}",
        received_ms=now_ms(),
        topic="depin/v1/x/up",
    )


# --- migrations -----------------------------------------------------------------------------------


async def test_migrations_apply_once(pg_dsn: str) -> None:
    pool = await create_pool(pg_dsn)
    try:
        first = await migrate(pool)
        assert first.timescale is False
        assert first.applied == ALL_MIGRATIONS
        second = await migrate(pool)
        assert second.applied == []
        rows = await pool.fetch("SELECT version, mode FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["mode"]) for r in rows] == [
            ("001_core", "native"),
            ("002_readings", "native"),
            ("003_epochs", "native"),
            ("004_media", "native"),
            ("005_epoch_seal", "native"),
            ("006_hw_classes", "native"),
            ("007_rejections_retention", "native"),
            ("008_api_counters", "native"),
            ("009_api_keys", "native"),
            ("010_packet_envelopes", "native"),
            ("011_query_polygon", "native"),
            ("012_epoch_summary", "native"),
            ("013_readings_blocks", "native"),
            ("014_readings_hourly", "native"),
            ("015_epoch_refused", "native"),
            ("016_scoring", "native"),
            ("017_market", "native"),
            ("018_settlement", "native"),
            ("019_manifest_pages", "native"),
            ("021_usage_demand", "native"),
            ("022_distributor_mirror", "native"),
            ("023_device_state", "native"),
            ("024_device_state_touched", "native"),
        ]
        kind = await pool.fetchval("SELECT relkind FROM pg_class WHERE relname = 'readings'")
        assert kind == b"p"  # partitioned table
    finally:
        await pool.close()


async def test_migration_012_backfills_the_epoch_summary_columns(pg_dsn: str, tmp_path: Path) -> None:
    """Epochs stored before 012 get params, cells and their list lengths from the manifest and the
    reward tables; an epoch whose manifest lacks params/cells gets what the summary served ({} and 0)."""
    from ingest.adapters.db import MIGRATIONS_DIR

    for p in MIGRATIONS_DIR.glob("*.sql"):
        if p.name < "012":
            shutil.copy(p, tmp_path / p.name)
    pool = await create_pool(pg_dsn)
    try:
        await migrate(pool, tmp_path)
        manifest = {"params": {"emission": "5"}, "cells": 2, "devices": [{}, {}, {}], "owners": [{}, {}]}
        for epoch, m in ((1, manifest), (2, {"epoch": 2})):
            await pool.execute(
                """INSERT INTO epochs (epoch, start_at, end_at, emission, allocated, unissued, root,
                                       inputs_digest, manifest)
                   VALUES ($1, $2, $3, 5, 5, 0, '\\x01', '\\x02', $4)""",
                epoch,
                ms_to_dt(epoch * 1_000),
                ms_to_dt(epoch * 1_000 + 500),
                m,
            )
        await pool.executemany(
            """INSERT INTO device_rewards (epoch, device_id, owner, cell, readings, amount)
               VALUES (1, $1, 'o', $2, 1, 1)""",
            [(dev(i), CELL_A) for i in range(3)],
        )
        await pool.executemany(
            "INSERT INTO owner_rewards (epoch, owner, amount, cumulative, proof) VALUES (1, $1, 1, 1, '[]')",
            [("0xa",), ("0xb",)],
        )
        assert (await migrate(pool)).applied[0] == "012_epoch_summary.sql"
        rows = await pool.fetch("SELECT epoch, params, cells, devices, owners FROM epochs ORDER BY epoch")
        assert [tuple(r) for r in rows] == [(1, {"emission": "5"}, 2, 3, 2), (2, {}, 0, 0, 0)]
    finally:
        await pool.close()


async def test_migration_019_pages_the_stored_manifests(pg_dsn: str, tmp_path: Path) -> None:
    """A version-2 manifest stored whole before 019 becomes its header plus the rows it was written
    with (the devices' class and registration and the cells' last paid epoch copied out of its lists):
    assembled again it is the same document. A version-1 manifest stays whole and is streamed as
    stored."""
    from ingest.adapters.db import MIGRATIONS_DIR
    from ingest.adapters.store.manifest import ManifestStore

    for p in MIGRATIONS_DIR.glob("*.sql"):
        if p.name < "019":
            shutil.copy(p, tmp_path / p.name)
    pool = await create_pool(pg_dsn)
    try:
        await migrate(pool, tmp_path)
        owners = ["0xAbC0000000000000000000000000000000000001", "0xabc0000000000000000000000000000000000002"]
        devices = [
            {"device_id": dev(i).hex(), "owner": owners[i % 2], "hw_class": 1 + i % 2,
             "registered_block": 50 + i, "cell": hex(cell), "readings": 3, "flagged": i, "quality": 7_500,
             "rank": 1, "amount": str(10**22 + i)}
            for i, cell in enumerate((CELL_B, CELL_A, CELL_A))
        ]  # fmt: skip
        devices.sort(key=lambda d: (int(d["cell"], 16), d["device_id"]))
        cells = [
            {"cell": hex(c), "base": 10_000, "boost": 10_000, "freshness": 5_000, "demand": 10_000,
             "weight": 5_000, "share": "9", "depth": 10_000, "paid": "9"}
            for c in sorted((CELL_A, CELL_B))
        ]  # fmt: skip
        whole = {
            "version": 2, "epoch": 1, "params": {"emission": "5"}, "cells": 2, "root": "0x01",
            "usage": [["0x872830828ffffff", "5"]], "last_paid": [[hex(CELL_B), 0]], "cell_factors": cells,
            "devices": devices,
            "owners": [{"owner": o, "amount": "1", "cumulative": str(i + 1)} for i, o in enumerate(owners)],
        }  # fmt: skip
        v1 = {"epoch": 2, "devices": [{"device_id": "00", "amount": "1"}], "owners": []}
        for epoch, m in ((1, whole), (2, v1)):
            await pool.execute(
                """INSERT INTO epochs (epoch, start_at, end_at, emission, allocated, unissued, root,
                                       inputs_digest, manifest, params, cells, devices, owners)
                   VALUES ($1, $2, $3, 5, 5, 0, '\\x01', '\\x02', $4, '{}', 0, 0, 0)""",
                epoch,
                ms_to_dt(epoch * 1_000),
                ms_to_dt(epoch * 1_000 + 500),
                m,
            )
        await pool.executemany(
            """INSERT INTO device_rewards (epoch, device_id, owner, cell, readings, amount, flagged, quality,
                                           rank)
               VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8)""",
            [
                (bytes.fromhex(d["device_id"]), d["owner"], int(d["cell"], 16), 3, int(d["amount"]),
                 d["flagged"], 7_500, 1)
                for d in devices
            ],
        )  # fmt: skip
        await pool.executemany(
            """INSERT INTO epoch_cells (epoch, cell, base, boost, freshness, demand, weight, share, depth,
                                        paid)
               VALUES (1, $1, 10000, 10000, 5000, 10000, 5000, 9, 10000, 9)""",
            [(int(c["cell"], 16),) for c in cells],
        )
        await pool.executemany(
            "INSERT INTO owner_rewards (epoch, owner, amount, cumulative, proof) VALUES (1, $1, 1, $2, '[]')",
            [(o, i + 1) for i, o in enumerate(owners)],
        )
        assert "019_manifest_pages.sql" in (await migrate(pool)).applied
        rows = await pool.fetch("SELECT epoch, manifest, manifest_paged FROM epochs ORDER BY epoch")
        assert [(r["manifest"], r["manifest_paged"]) for r in rows] == [
            (
                {
                    k: v
                    for k, v in whole.items()
                    if k not in ("cell_factors", "last_paid", "devices", "owners")
                },
                True,
            ),
            (v1, False),
        ]
        reads = ManifestStore(pool)
        assert await reads.manifest(1) == whole
        assert await reads.manifest(2) == v1
        chunks: list[bytes] = []

        async def write(b: bytes) -> None:
            chunks.append(b)

        await reads.copy_manifest(2, write)
        assert json.loads(b"".join(chunks)) == v1
        chunks.clear()
        await reads.copy_manifest(1, write)
        assert json.loads(b"".join(chunks)) == whole
        assert await reads.manifest_header(2) == ({"epoch": 2}, False)
    finally:
        await pool.close()


async def test_migrations_concurrent(pg_dsn: str) -> None:
    pools = [await create_pool(pg_dsn, max_size=2) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(p) for p in pools))
        applied = [r.applied for r in results]
        assert sorted(applied, key=len) == [[], [], ALL_MIGRATIONS]
        assert await pools[0].fetchval("SELECT count(*) FROM schema_migrations") == len(ALL_MIGRATIONS)
    finally:
        for p in pools:
            await p.close()


# --- write path -----------------------------------------------------------------------------------


async def test_write_batch_stores_and_is_idempotent(store: Store) -> None:
    pkts = [packet(dev(1), 1), packet(dev(1), 2), packet(dev(2), 1)]
    rejs = [rejection(1), rejection(2, Reason.MALFORMED)]
    res = await store.write_batch(pkts, rejs)
    assert (res.stored, res.readings, res.rejections) == (3, 9, 2)
    assert res.duplicates == [] and res.replays == []

    again = await store.write_batch(pkts, rejs)
    assert (again.stored, again.readings, again.rejections) == (0, 0, 0)
    assert sorted(again.duplicates) == sorted((p.device_id, p.seq) for p in pkts)
    assert again.replays == []
    assert await store.counts() == Totals(3, 9, {"bad_signature": 1, "malformed": 1})


async def test_a_batch_notes_each_new_stored_resolution(store: Store) -> None:
    """The place queries scan the resolutions in readings_resolutions (migration 013): a batch adds
    the ones it stores, a new writer process (another IngestStore) adds one it has not seen."""
    cell8 = h3cells.parent(CELL_A, 8)
    await store.write_batch([packet(dev(1), 1, cells=(CELL_A,) * 3)], [])
    assert [r["res"] for r in await store.pool.fetch("SELECT res FROM readings_resolutions")] == [9]
    await store.write_batch([packet(dev(1), 2, cells=(CELL_A, cell8, CELL_A))], [])
    other = IngestStore(store.pool)
    await other.write_batch([packet(dev(2), 1, cells=(cell8,) * 3)], [])
    rows = await store.pool.fetch("SELECT res FROM readings_resolutions ORDER BY res")
    assert [r["res"] for r in rows] == [8, 9]


async def test_duplicate_vs_replay(store: Store) -> None:
    original = packet(dev(1), 7)
    await store.write_batch([original], [])
    replay = packet(dev(1), 7, variant=b"forged")
    res = await store.write_batch([packet(dev(1), 7), replay], [])
    assert res.stored == 0
    assert res.duplicates == [(dev(1), 7)]
    assert res.replays == [(dev(1), 7)]
    assert res.rejections == 1
    rows = await store.pool.fetch("SELECT * FROM rejections")
    assert len(rows) == 1
    assert rows[0]["reason"] == "replay"
    assert bytes(rows[0]["message_digest"]) == replay.message_digest
    assert (bytes(rows[0]["device_id"]), rows[0]["seq"]) == (dev(1), 7)
    stored = await store.pool.fetchval("SELECT payload_digest FROM packets")
    assert bytes(stored) == original.payload_digest  # the first one stays
    # Re-running the batch with the replay records nothing new.
    res = await store.write_batch([replay], [])
    assert (res.replays, res.rejections) == ([(dev(1), 7)], 0)


async def test_in_batch_duplicate_and_replay(store: Store) -> None:
    first = packet(dev(3), 1)
    res = await store.write_batch([first, packet(dev(3), 1), packet(dev(3), 1, variant=b"other")], [])
    assert (res.stored, res.readings) == (1, 3)
    assert res.duplicates == [(dev(3), 1)]
    assert res.replays == [(dev(3), 1)]
    assert (await store.counts()).readings == 3
    assert bytes(await store.pool.fetchval("SELECT payload_digest FROM packets")) == first.payload_digest


async def test_concurrent_writers_overlapping_batches(store: Store) -> None:
    """Two workers get the same packets (a redelivery after a reconnect) in opposite orders at once."""
    pkts = [packet(dev(d), seq, n=2) for d in range(5) for seq in range(40)]
    for _ in range(3):
        results = await asyncio.gather(
            store.write_batch(pkts, []), store.write_batch(list(reversed(pkts)), [])
        )
        assert sum(r.stored for r in results) in (len(pkts), 0)
        assert all(r.replays == [] for r in results)
        assert sum(r.stored + len(r.duplicates) for r in results) == 2 * len(pkts)
    assert (await store.counts()).packets == len(pkts)
    assert (await store.counts()).readings == 2 * len(pkts)
    # The rows themselves, each once: `packets` is what keeps readings unique (no unique key on them).
    rows = await store.pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT (device_id, seq, idx)) AS distinct_n FROM readings"
    )
    assert (rows["n"], rows["distinct_n"]) == (2 * len(pkts), 2 * len(pkts))


async def test_rejections_unique_per_message(store: Store) -> None:
    r = rejection(42, device=dev(1))
    res = await store.write_batch([], [r, r])
    assert res.rejections == 1
    res = await store.write_batch([], [r])
    assert res.rejections == 0
    recent = await store.recent_rejections(dev(1), 10)
    assert len(recent) == 1
    assert recent[0].reason == "bad_signature"
    assert recent[0].device_id == dev(1)
    assert recent[0].message_digest == r.message_digest
    assert await store.recent_rejections(dev(2), 10) == []


async def test_hostile_values_do_not_fail_the_batch(store: Store) -> None:
    """NUL in texts, floats beyond `real`, absurd timestamps: the batch commits, nothing raises."""
    odd = Reading(
        ts_ms=now_ms(),
        lat=1.0,
        lon=2.0,
        vals={"t\x00x": 1.5},
        acc=1e300,
        alt=-1e300,
        media=Media(sha256=b"\x01" * 32, uri="s3://b/\x00k"),
    )
    odder = odd._replace(ts_ms=odd.ts_ms + 1, acc=math.nan, alt=-math.inf)
    p1 = packet(dev(4), 1, readings=(odd, odder), kind="we\x00ather")
    p2 = packet(dev(4), 2, ts0=2**53)  # beyond year 9999
    r = RejectedMessage(
        hashlib.sha256(b"nul").digest(), None, 2**64 - 1, Reason.MALFORMED, "bad \x00", now_ms(), "t\x00"
    )
    res = await store.write_batch([p1, p2], [r])
    assert (res.stored, res.readings, res.rejections) == (1, 2, 2)
    page = await store.readings(device_id=dev(4), start_ms=0, end_ms=now_ms() + DAY_MS, limit=10)
    item = page.items[0]
    assert item.vals == {"t\ufffdx": 1.5}
    assert [(x.acc, x.alt) for x in page.items] == [(None, None)] * 2
    assert (item.media_sha256, item.media_uri) == (b"\x01" * 32, "s3://b/\ufffdk")
    reasons = {x.reason: x for x in await store.recent_rejections(None, 10)}
    assert reasons["malformed"].seq in (None, 2)


# --- media reuse -----------------------------------------------------------------------------------


async def _flags_of(store: Store, device: bytes, seq: int) -> list[int]:
    rows = await store.pool.fetch(
        "SELECT flags FROM readings WHERE device_id=$1 AND seq=$2 ORDER BY idx", device, seq
    )
    return [r["flags"] for r in rows]


async def test_media_reuse_flags_every_device_across_batches_workers_and_restarts(store: Store) -> None:
    """docs/RELIABILITY.md D19: the same media hash from two devices flags both, whichever batch, worker or
    process stored the first use (a second Store on the same database stands for either)."""
    frame, own, shared = (Media(bytes([i]) * 32, f"ipfs://{i}") for i in (0xF1, 0xF2, 0xF3))
    a, b, c, d = dev(11), dev(12), dev(13), dev(14)

    def shot(device: bytes, seq: int, *media: Media) -> AcceptedPacket:
        t = now_ms() - 10_000 + seq
        return packet(
            device, seq, readings=tuple(Reading(t + i, 52.5, 13.4, {}, media=m) for i, m in enumerate(media))
        )

    first = await store.write_batch([shot(a, 1, frame), shot(a, 2, own)], [])
    again = await store.write_batch([shot(a, 3, frame)], [])  # a's own frame again: not reuse
    assert first.reused_media == again.reused_media == []
    assert [await _flags_of(store, a, s) for s in (1, 2, 3)] == [[0], [0], [0]]

    other_worker = Store(store.pool)
    copied = await other_worker.write_batch([shot(b, 1, frame)], [])
    assert copied.reused_media == [frame.sha256]
    assert await _flags_of(store, b, 1) == [FLAG_MEDIA_REUSE]
    assert await _flags_of(store, a, 1) == [FLAG_MEDIA_REUSE]  # the first use, stored two batches ago
    assert await _flags_of(store, a, 2) == [0]

    later = await store.write_batch([shot(a, 4, frame)], [])  # the hash is known reused now
    assert later.reused_media == [frame.sha256] and await _flags_of(store, a, 4) == [FLAG_MEDIA_REUSE]

    # Within one batch: both devices, every reading carrying the hash, and nothing else.
    both = await store.write_batch([shot(c, 1, shared, frame), shot(d, 1, own, shared)], [])
    assert both.reused_media == sorted([frame.sha256, shared.sha256, own.sha256])
    assert await _flags_of(store, c, 1) == [FLAG_MEDIA_REUSE, FLAG_MEDIA_REUSE]
    assert await _flags_of(store, d, 1) == [FLAG_MEDIA_REUSE, FLAG_MEDIA_REUSE]  # own: a's, copied by d
    assert await _flags_of(store, a, 2) == [FLAG_MEDIA_REUSE]

    # A redelivered packet stores nothing and decides nothing.
    redelivered = await store.write_batch([shot(b, 1, frame)], [])
    assert redelivered.stored == 0 and redelivered.reused_media == []
    rows = await store.pool.fetch(
        "SELECT media_sha256, device_id, seq, reused FROM media ORDER BY media_sha256"
    )
    assert [(bytes(r["media_sha256"]), bytes(r["device_id"]), r["seq"], r["reused"]) for r in rows] == [
        (frame.sha256, a, 1, True),
        (own.sha256, a, 2, True),
        (shared.sha256, c, 1, True),
    ]


# --- partitions -----------------------------------------------------------------------------------


async def _partition_of(store: Store, device: bytes) -> set[str]:
    rows = await store.pool.fetch(
        "SELECT DISTINCT tableoid::regclass::text AS p FROM readings WHERE device_id=$1", device
    )
    return {r["p"] for r in rows}


def _day_name(ms: int) -> str:
    return "readings_p" + time.strftime("%Y%m%d", time.gmtime(ms / 1000))


async def test_daily_partitions_and_default(store: Store) -> None:
    today = now_ms()
    tomorrow = today + DAY_MS
    old = today - 30 * DAY_MS  # outside the on-demand window → DEFAULT partition
    await store.write_batch(
        [
            packet(dev(1), 1, ts0=today, n=1),
            packet(dev(2), 1, ts0=tomorrow, n=1),
            packet(dev(3), 1, ts0=old, n=1),
        ],
        [],
    )
    assert await _partition_of(store, dev(1)) == {_day_name(today)}
    assert await _partition_of(store, dev(2)) == {_day_name(tomorrow)}
    assert await _partition_of(store, dev(3)) == {"readings_default"}

    # Creating the old day's partition later moves its rows out of the DEFAULT partition.
    async with store.pool.acquire() as conn:
        created = await ensure_partitions(conn, ms_to_dt(old), ms_to_dt(old))
        assert created == [_day_name(old)]
        assert await ensure_partitions(conn, ms_to_dt(old), ms_to_dt(old)) == []
    assert await _partition_of(store, dev(3)) == {_day_name(old)}
    assert (await store.counts()).readings == 3
    # The key still holds on the moved partition: the same packet is a duplicate, not a second row.
    res = await store.write_batch([packet(dev(3), 1, ts0=old, n=1)], [])
    assert res.duplicates == [(dev(3), 1)]


async def test_packet_spanning_days_gets_every_days_partition(store: Store) -> None:
    # The store derives a packet's days from its first and last reading only: a reading on a later day
    # than the first must still find its day's partition, not fall into the DEFAULT one.
    start = (now_ms() // DAY_MS + 1) * DAY_MS - 1000  # one second before tomorrow starts
    await store.write_batch([packet(dev(5), 1, ts0=start, n=3, step_ms=DAY_MS // 2 + 1)], [])
    days = {_day_name(start + i * (DAY_MS // 2 + 1)) for i in range(3)}
    assert len(days) == 2 and await _partition_of(store, dev(5)) == days


async def test_partition_creation_race(store: Store) -> None:
    start = now_ms() + 60 * DAY_MS  # days nobody created yet
    lo, hi = ms_to_dt(start), ms_to_dt(start + 4 * DAY_MS)

    async def create() -> list[str]:
        async with store.pool.acquire() as conn:
            return await ensure_partitions(conn, lo, hi)

    results = await asyncio.gather(*(create() for _ in range(4)))
    created = sorted(name for r in results for name in r)
    assert created == sorted(_day_name(start + i * DAY_MS) for i in range(5))


# --- registry mirror and cursor -------------------------------------------------------------------


async def test_devices_and_cursor_round_trip(store: Store) -> None:
    a = DeviceRecord(dev(1), b"\x11" * 32, "0x" + "aa" * 20, 2, CELL_A, True, registered_block=10)
    b = DeviceRecord(dev(2), b"\x22" * 32, "0x" + "bb" * 20, 1, 0, True)
    await store.upsert_devices([a, b], block=12)
    loaded = {d.device_id: d for d in await store.load_devices()}
    assert loaded[dev(1)] == a
    assert loaded[dev(2)] == DeviceRecord(dev(2), b"\x22" * 32, "0x" + "bb" * 20, 1, 0, True, 12)

    moved = DeviceRecord(dev(1), b"\x33" * 32, "0x" + "cc" * 20, 2, CELL_B, False)
    await store.upsert_devices([moved], block=20)
    d1 = {d.device_id: d for d in await store.load_devices()}[dev(1)]
    assert (d1.pubkey, d1.owner, d1.asserted_cell, d1.active, d1.registered_block) == (
        b"\x33" * 32,
        "0x" + "cc" * 20,
        CELL_B,
        False,
        10,
    )
    assert await store.pool.fetchval("SELECT updated_block FROM devices WHERE device_id=$1", dev(1)) == 20

    assert await store.get_cursor("registry") is None
    await store.set_cursor("registry", 100, b"\xab" * 32)
    assert await store.get_cursor("registry") == (100, b"\xab" * 32)
    await store.set_cursor("registry", 101, b"\xcd" * 32)
    assert await store.get_cursor("registry") == (101, b"\xcd" * 32)


# --- epochs ---------------------------------------------------------------------------------------


async def test_epoch_coverage_aggregation(store: Store) -> None:
    owner1, owner2 = "0x" + "01" * 20, "0x" + "02" * 20
    await store.upsert_devices(
        [
            DeviceRecord(dev(1), b"k" * 32, owner1, 2, 0, True, 5),
            DeviceRecord(dev(2), b"k" * 32, owner2, 1, 0, True, 7),
        ],
        block=9,
    )
    t0 = (now_ms() // DAY_MS) * DAY_MS  # today 00:00 UTC
    start, end = t0 + 3_600_000, t0 + 7_200_000
    # dev1: 4 readings in the window: cells A, A, B, B with flags 0, 2, 0, 0; one reading after the window.
    p1 = packet(
        dev(1),
        1,
        n=5,
        ts0=start,
        step_ms=600_000,
        cells=(CELL_A, CELL_A, CELL_B, CELL_B, CELL_A),
        flags=(0, 2, 0, 0, 0),
    )  # ts: start+0, +10, +20, +30, +40 min → all inside
    p2 = packet(dev(1), 2, n=1, ts0=end, cells=(CELL_A,))  # exactly at end: excluded
    p3 = packet(dev(2), 1, n=3, ts0=start - 1, step_ms=1, cells=(CELL_A,) * 3, flags=(1, 1, 0))
    # p3: ts start-1 (excluded), start (flagged), start+1 (clean)
    p4 = packet(dev(9), 1, n=2, ts0=start, cells=(CELL_A,) * 2)  # unknown to the mirror: left out
    await store.write_batch([p1, p2, p3, p4], [])
    rows = await store.epoch_coverage(start, end)
    got = [
        (r.device_id, r.owner, r.hw_class, r.cell, r.readings, r.flagged, r.registered_block) for r in rows
    ]
    expected = sorted(
        [
            (dev(1), owner1, 2, CELL_A, 2, 1, 5),  # start, +40 min clean; +10 min flagged
            (dev(1), owner1, 2, CELL_B, 2, 0, 5),
            (dev(2), owner2, 1, CELL_A, 1, 1, 7),
        ],
        key=lambda t: (t[0], t[3]),
    )
    assert got == expected


async def test_save_epoch_result_copies_every_value_as_it_is(store: Store) -> None:
    """The reward rows go in through COPY's text format: odd owner spellings (backslash, tab, newline,
    carriage return, non-ASCII), uint256 amounts and missing values come back unchanged."""
    big = 2**255 + 12345
    odd = 'o\\w\tn\ne\rr "ü"'
    cells = [
        CellReward(CELL_A, 1, 2, 3, 4, 5, big, 7, big - 1, None),
        CellReward(CELL_B, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    ]
    devices = [
        DeviceReward(dev(3), odd, CELL_A, 5, big, 2, 9_000, 1, None, None),
        DeviceReward(dev(2), "0x" + "02" * 20, CELL_B, 1, 1, 0, 0, 0, 3, 2**62),
    ]
    await store.save_epoch_result(
        2, 1, 2, big, big, 0, b"\x01", b"\x02", {"epoch": 2}, devices, [OwnerReward(odd, big, big, [])], cells
    )
    got = await store.pool.fetch(
        "SELECT device_id, owner, cell, readings, amount, flagged, quality, rank, hw_class, registered_block "
        "FROM device_rewards WHERE epoch = 2 ORDER BY cell"
    )
    assert [DeviceReward(bytes(r[0]), *r[1:4], int(r[4]), *r[5:]) for r in got] == sorted(
        devices, key=lambda d: d.cell
    )
    got = await store.pool.fetch("SELECT * FROM epoch_cells WHERE epoch = 2 ORDER BY cell")
    assert [CellReward(*(int(v) if v is not None else None for v in list(r)[1:])) for r in got] == sorted(
        cells
    )


async def test_save_epoch_result_idempotent_and_big_amounts(store: Store) -> None:
    big = 2**255 + 12345  # far beyond 2^64
    owner1, owner2 = "0xAbC" + "0" * 37, "0x" + "02" * 20
    proof = [b"\xab" * 32, b"\xcd" * 32]
    args = dict(
        epoch=1,
        start_ms=1_000,
        end_ms=2_000,
        emission=big + 10,
        allocated=big,
        unissued=10,
        root=b"\x01" * 32,
        inputs_digest=b"\x02" * 32,
        manifest={"epoch": 1, "params": {"k": 10}},
        device_rewards=[
            DeviceReward(dev(1), owner1, CELL_A, 5, big - 1),
            DeviceReward(dev(2), owner2, CELL_B, 1, 1),
        ],
        owner_rewards=[OwnerReward(owner1, big - 1, big - 1, proof), OwnerReward(owner2, 1, 1, [])],
    )
    saved = await store.save_epoch_result(**args)  # type: ignore[arg-type]
    assert saved.status == "closed"
    assert (saved.emission, saved.allocated, saved.unissued) == (big + 10, big, 10)
    assert saved.root == b"\x01" * 32
    assert saved.manifest == {"epoch": 1, "params": {"k": 10}}
    assert (saved.start_ms, saved.end_ms) == (1_000, 2_000)
    # The column keeps the proof as the 0x-hex list OpenZeppelin's tools read.
    stored_proof = await store.pool.fetchval("SELECT proof FROM owner_rewards WHERE owner = $1", owner1)
    assert stored_proof == ["0x" + "ab" * 32, "0x" + "cd" * 32]

    # Same epoch again with different numbers: nothing changes, the stored row comes back.
    again = await store.save_epoch_result(**{**args, "allocated": 1, "owner_rewards": []})  # type: ignore[arg-type]
    assert again == saved
    assert await store.pool.fetchval("SELECT count(*) FROM owner_rewards") == 2

    reward = await store.owner_reward(1, owner1.lower())
    assert reward == OwnerReward(owner1, big - 1, big - 1, proof)
    assert await store.owner_reward(1, "0x" + "99" * 20) is None
    rewards = await store.epoch_rewards(1)
    assert rewards.devices[0].amount in (big - 1, 1)
    assert sum(d.amount for d in rewards.devices) == big
    assert rewards.owners == [
        OwnerReward(owner2, 1, 1, []),
        OwnerReward(owner1, big - 1, big - 1, proof),
    ]  # by owner

    args2 = {
        **args,
        "epoch": 2,
        "start_ms": 2_000,
        "end_ms": 3_000,
        "owner_rewards": [OwnerReward(owner1, 5, big + 4, [])],
        "device_rewards": [],
    }
    await store.save_epoch_result(**args2)  # type: ignore[arg-type]
    assert await store.last_epoch() == 2
    assert await store.epoch_progress() == (2, 1)
    assert await store.cumulative_by_owner(2) == {owner1: big - 1, owner2: 1}
    assert await store.cumulative_by_owner(3) == {owner1: big + 4, owner2: 1}
    assert await store.cumulative_by_owner(1) == {}

    # Publish journal and status transitions.
    assert await store.journal_tx(1, b"\xf8raw", b"\x0a" * 32, 7)
    e = await store.get_epoch(1)
    assert e is not None and (e.raw_tx, e.tx_nonce, e.status) == (b"\xf8raw", 7, "signed")
    assert e.journal == (b"\xf8raw", b"\x0a" * 32, 7)
    assert await store.epoch_progress() == (2, 1)  # signed is not on chain yet
    assert not await store.mark_settled(1)  # not published yet
    assert await store.mark_published(1, b"\x0a" * 32, 123, b"\xbb" * 32)
    assert await store.unsettled() != [] and (await store.unsettled())[0].block_hash == b"\xbb" * 32
    # A reorg dropped it: back to signed, the journal kept for a rebroadcast; then seen again.
    assert await store.unpublish(1, b"\x0a" * 32)
    e = await store.get_epoch(1)
    assert e is not None and (e.status, e.block_number, e.block_hash) == ("signed", None, None)
    assert e.journal == (b"\xf8raw", b"\x0a" * 32, 7)
    assert await store.mark_published(1, b"\x0a" * 32, 123, b"\xbb" * 32)
    assert not await store.mark_settled(1, b"\xcc" * 32)  # not the block it was seen in
    assert await store.mark_settled(1, b"\xbb" * 32)
    e = await store.get_epoch(1)
    assert e is not None and (e.status, e.block_number) == ("settled", 123)
    assert e.published_ms is not None
    assert not await store.journal_tx(1, b"x", b"y", 8)  # settled: the journal is frozen
    assert not await store.mark_published(1, b"\x0b" * 32, 124)
    assert await store.unsettled() == []
    # A veto is final from any state but refused.
    assert await store.mark_vetoed(1) == "settled"
    assert await store.mark_vetoed(1) is None
    e = await store.get_epoch(1)
    assert e is not None and e.status == "vetoed"
    assert await store.get_epoch(99) is None


async def test_last_epoch_empty(store: Store) -> None:
    assert await store.last_epoch() is None
    assert await store.epoch_progress() == (None, None)
    assert await store.earliest_reading_ms() is None
    assert await store.sealed_until() == (None, 0)


# --- late readings: the epoch seal ----------------------------------------------------------------


async def test_seal_refuses_new_packets_of_a_closed_epoch_but_not_redeliveries(store: Store) -> None:
    t = now_ms() - 3_600_000
    stored = packet(dev(1), 1, n=2, ts0=t - 10)
    assert (await store.write_batch([stored], [])).stored == 1
    assert await store.earliest_reading_ms() == t - 10

    assert await store.seal_epoch(4, t) == (t, 4)
    assert await store.seal_epoch(3, t - 1_000) == (t, 4)  # monotone: a lower seal changes nothing
    assert await store.sealed_until() == (t, 4)

    late = packet(dev(2), 1, n=3, ts0=t - 1)  # first reading just before the watermark
    spanning = packet(dev(2), 2, n=3, ts0=t - 1_000, step_ms=900)  # starts before, ends after: refused
    on_time = packet(dev(2), 3, n=1, ts0=t)  # at the watermark: the next epoch, open
    replay = packet(dev(1), 1, n=2, ts0=t - 10, variant=b"forged")  # a stored seq, another payload
    res = await store.write_batch([late, stored, spanning, on_time, replay, late], [])
    assert (res.stored, res.readings) == (1, 1)
    assert res.duplicates == [(dev(1), 1)]  # a redelivery of a stored packet stays a duplicate
    assert res.replays == [(dev(1), 1)]
    assert sorted(res.epoch_closed) == [(dev(2), 1), (dev(2), 1), (dev(2), 2)]
    assert res.rejections == 3  # late (once: the same message twice), spanning, replay
    rows = await store.recent_rejections(dev(2))
    assert sorted((r.seq, r.reason) for r in rows) == [(1, "epoch_closed"), (2, "epoch_closed")]
    detail = next(r.detail for r in rows if r.seq == 1)
    assert "epochs ≤ 4" in detail and ms_to_dt(t).isoformat(timespec="milliseconds")[:23] in detail
    assert await store.counts() == Totals(2, 3, {"epoch_closed": 2, "replay": 1})
    # A redelivery of the refused packet is refused again, and records nothing new.
    again = await store.write_batch([late], [])
    assert (again.stored, again.epoch_closed, again.rejections) == (0, [(dev(2), 1)], 0)


async def test_a_batch_in_flight_commits_before_the_seal_and_is_counted(store: Store) -> None:
    """The seal waits for a batch holding the shared lock; batches after the seal see the watermark.

    Deterministic: a transaction standing in for a batch holds the shared lock while the seal waits
    (checked in pg_locks), then commits a packet in the epoch; the epoch's coverage, read after the
    seal, includes it, and a batch started after the seal is refused."""
    t = now_ms() - 3_600_000
    await store.upsert_devices([DeviceRecord(dev(1), b"k" * 32, "0x" + "01" * 20, 1, 0, True, 1)], block=1)
    async with store.pool.acquire() as batch_conn:
        tx = batch_conn.transaction()
        await tx.start()
        await batch_conn.execute("SELECT pg_advisory_xact_lock_shared($1)", SEAL_LOCK_KEY)
        seal = asyncio.create_task(store.seal_epoch(1, t))

        async def seal_waiting() -> bool:
            n = await store.pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            return bool(n)

        deadline = time.monotonic() + 10
        while not await seal_waiting():
            assert time.monotonic() < deadline, "the seal did not wait for the batch"
            await asyncio.sleep(0.01)
        assert not seal.done()
        # The "batch" stores a packet of the epoch being sealed, then commits.
        await batch_conn.execute(
            """INSERT INTO packets (device_id, seq, payload_digest, kind, n_readings, received_at, first_ts)
               VALUES ($1, 1, $2, 'weather', 1, now(), $3)""",
            dev(1),
            b"d" * 32,
            ms_to_dt(t - 5),
        )
        await batch_conn.execute(
            """INSERT INTO readings (ts, device_id, seq, idx, lat, lon, cell, kind)
               VALUES ($1, $2, 1, 0, 1.0, 2.0, $3, 'weather')""",
            ms_to_dt(t - 5),
            dev(1),
            CELL_A,
        )
        await tx.commit()
    assert await asyncio.wait_for(seal, 10) == (t, 1)
    coverage = await store.epoch_coverage(t - 60_000, t)
    assert [(r.device_id, r.readings) for r in coverage] == [(dev(1), 1)]
    res = await store.write_batch([packet(dev(1), 2, n=1, ts0=t - 4)], [])
    assert (res.stored, res.epoch_closed) == (0, [(dev(1), 2)])


async def test_a_batch_started_while_a_seal_waits_queues_behind_it(store: Store) -> None:
    """Holder of the shared lock → seal waiting (exclusive) → a new batch waits behind the seal and then
    sees its watermark, so it cannot slip a late packet in between."""
    t = now_ms() - 3_600_000
    async with store.pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT pg_advisory_xact_lock_shared($1)", SEAL_LOCK_KEY)
        seal = asyncio.create_task(store.seal_epoch(1, t))
        await asyncio.sleep(0.2)
        batch = asyncio.create_task(store.write_batch([packet(dev(5), 1, n=1, ts0=t - 1)], []))
        await asyncio.sleep(0.3)
        assert not seal.done() and not batch.done()
        await tx.commit()
    await asyncio.wait_for(seal, 10)
    res = await asyncio.wait_for(batch, 10)
    assert (res.stored, res.epoch_closed) == (0, [(dev(5), 1)])


# --- queries --------------------------------------------------------------------------------------


async def test_cursor_pagination_returns_every_row_once(store: Store) -> None:
    t0 = now_ms() - 3_600_000
    pkts = []
    for d in range(1, 6):
        for seq in range(1, 5):
            # Same timestamps across devices and duplicated timestamps inside packets: ties galore.
            readings = tuple(
                Reading(ts_ms=t0 + seq * 1000 + (i // 2) * 1000, lat=1.0, lon=2.0, vals={"i": i})
                for i in range(5)
            )
            cells = tuple(CELL_A if (d + i) % 2 else CELL_B for i in range(5))
            pkts.append(packet(dev(d), seq, readings=readings, cells=cells))
    res = await store.write_batch(pkts, [])
    assert res.readings == 100

    async def collect(**filters: object) -> list[tuple[int, str, int, int]]:
        out: list[tuple[int, str, int, int]] = []
        after = None
        while True:
            page = await store.readings(start_ms=t0, end_ms=t0 + 3_600_000, limit=7, after=after, **filters)  # type: ignore[arg-type]
            out += [(i.ts_ms, i.device_id.hex(), i.seq, i.idx) for i in page.items]
            after = page.next
            if after is None:
                return out

    everything = await collect()
    assert len(everything) == 100
    assert len(set(everything)) == 100
    assert everything == sorted(everything, key=lambda k: (k[0], bytes.fromhex(k[1]), k[2], k[3]))

    one_device = await collect(device_id=dev(3))
    assert len(one_device) == 20 and len(set(one_device)) == 20
    assert one_device == [k for k in everything if k[1] == dev(3).hex()]

    one_cell = await collect(cell=CELL_A)
    in_a = {(p.device_id.hex(), p.seq, i) for p in pkts for i, c in enumerate(p.cells) if c == CELL_A}
    assert len(in_a) == 52
    assert one_cell == [k for k in everything if k[1:] in in_a]
    page = await store.readings(cell=CELL_A, start_ms=t0, end_ms=t0 + 3_600_000, limit=1)
    assert page.items[0].cell == CELL_A


# --- embedded server ------------------------------------------------------------------------------


async def test_embedded_server_reuses_its_data_dir() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="depin-pg-")) / "data"
    try:
        async with embedded_postgres(data_dir) as dsn:
            conn = await asyncpg.connect(dsn)
            await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
            await conn.close()
        # A process that died holding a handle (its pid left in the wheel's list) must not keep the
        # server from stopping on the next exit.
        dead = await asyncio.create_subprocess_exec("true")
        await dead.wait()
        (data_dir / ".handle_pids.json").write_text(json.dumps([dead.pid]))
        async with embedded_postgres(data_dir) as dsn:
            conn = await asyncpg.connect(dsn)
            assert await conn.fetchval("SELECT x FROM kept") == 42
            await conn.close()
        with pytest.raises(OSError):
            await asyncpg.connect(dsn, timeout=5)
    finally:
        shutil.rmtree(data_dir.parent, ignore_errors=True)


# --- throughput (printed, not asserted) -----------------------------------------------------------


async def test_copy_throughput_50k(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = now_ms() - 600_000
    await store.write_batch([packet(dev(200), 1, ts0=t0)], [])  # warm: staging tables, partitions
    shapes = {
        "100 readings/packet": [
            packet(dev(d), seq, n=100, ts0=t0 + seq * 100, step_ms=1) for d in range(10) for seq in range(50)
        ],
        "1 reading/packet": [
            packet(dev(d), seq, n=1, ts0=t0 + seq) for d in range(10, 20) for seq in range(5000)
        ],
    }
    for label, pkts in shapes.items():
        per_batch = max(1, 5000 // len(pkts[0].readings))  # 5 000 readings per batch
        started = time.perf_counter()
        total = 0
        for i in range(0, len(pkts), per_batch):
            total += (await store.write_batch(pkts[i : i + per_batch], [])).readings
        elapsed = time.perf_counter() - started
        assert total == 50_000
        with capsys.disabled():
            print(
                f"\nwrite_batch, {label}: 50,000 readings in {elapsed:.2f} s = {total / elapsed:,.0f} "
                f"readings/s, {len(pkts) / elapsed:,.0f} packets/s (5k-reading batches)"
            )
