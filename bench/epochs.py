"""Epoch close at scale (issue 14, "Speed"): `Epochs.close` of one epoch of `--readings` readings from
`--devices` devices over `--cells` H3 cells, on a fresh embedded PostgreSQL.

Seeds one day (yesterday, UTC) by COPY: device d's readings walk `--cells / --devices` cells of a
shared pool (so every cell is covered, ~5 cells per device by default), 1 reading in 50 flagged; owners
are `--owners`; half the hardware classes stationary. Then prints the coverage aggregation alone
(`EpochStore.epoch_coverage`, the SQL, cold) and closes the epoch (`Epochs.close`: seal, score,
rewards and manifest stored; no chain; freshness and demand inputs empty, so every factor is read and
computed but 1.0) in a fresh process, printing each part's time and the process's peak resident
memory after it (the closer's side; PostgreSQL's own is not counted), where the checkout records
parts (`Epochs.last_close_parts`).

`--code DIR` closes with `ingest` from another checkout; repeated (`--code /work/main --code .`) with
`--rounds N`, the closes alternate A B A B … on the same seeded data (the result is deleted and the
reward tables vacuumed before each close): a before/after on a shared machine.

    .venv/bin/python bench/epochs.py [--readings 10000000] [--devices 10000] [--cells 50000]
        [--code DIR ...] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DAY_MS = 86_400_000
EPOCH = 10  # the seeded day
HERE = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    print(msg, flush=True)


def peak_mb() -> float:  # not ingest.parts.peak_rss_mb: another checkout may not have it
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(args: argparse.Namespace) -> None:
    import asyncpg
    import h3

    from devices.protocol.model import DeviceRecord
    from ingest.adapters.db import create_pool, embedded_postgres, migrate
    from ingest.adapters.store import EpochStore, MirrorStore

    say(f"seeding with ingest from {sys.modules['ingest'].__file__}")
    rnd = random.Random(14)
    # a pool of distinct resolution-9 cells from Berlin northwards (~150 k per degree of latitude in the
    # box: it grows with the pool, else a pool above that never fills)
    pool_cells: list[int] = []
    seen: set[int] = set()
    top = 52.0 + max(1.0, args.cells / 50_000)
    while len(pool_cells) < args.cells:
        c = h3.str_to_int(h3.latlng_to_cell(rnd.uniform(52.0, top), rnd.uniform(12.5, 14.5), 9))
        if c not in seen:
            seen.add(c)
            pool_cells.append(c)
    ids = [rnd.randbytes(32) for _ in range(args.devices)]
    t0 = (time.time_ns() // 1_000_000 // DAY_MS - 1) * DAY_MS
    with tempfile.TemporaryDirectory() as tmp:
        async with embedded_postgres(args.pgdata or Path(tmp) / "pg") as dsn:
            pool = await create_pool(dsn, min_size=2, max_size=4)
            await migrate(pool)
            conn = await asyncpg.connect(dsn)
            shape = f"{args.readings} {args.devices} {args.cells} {args.owners}"
            await conn.execute("CREATE TABLE IF NOT EXISTS bench_seed (shape text PRIMARY KEY, t0 bigint)")
            seeded = await conn.fetchval("SELECT t0 FROM bench_seed WHERE shape = $1", shape)
            if seeded is not None:
                t0 = seeded
                say(f"reusing the readings seeded in {args.pgdata} ({shape})")
            else:
                await seed(conn, args, t0, pool_cells, ids)
                await conn.execute("INSERT INTO bench_seed VALUES ($1, $2)", shape, t0)
            await conn.close()
            records = [
                DeviceRecord(i, bytes(32), "0x" + f"{n % args.owners + 1:040x}", 1 + n % 2, 0, True, 1 + n)
                for n, i in enumerate(ids)
            ]
            await MirrorStore(pool).upsert_devices(records, 1)
            await pool.execute(
                """INSERT INTO hw_classes (id, name, max_speed_kmh, h3_res, enabled)
                   VALUES (1, 'dashcam', 150, 9, true), (2, 'weather', 0, 9, true) ON CONFLICT DO NOTHING"""
            )
            store = EpochStore(pool)
            t = time.perf_counter()
            coverage = await store.epoch_coverage(t0, t0 + DAY_MS)
            say(f"coverage SQL: {time.perf_counter() - t:.2f} s, {len(coverage):,} (device, cell) rows")
            del coverage
            await pool.close()
            genesis, length = t0 - (EPOCH - 1) * DAY_MS, DAY_MS  # the seeded day is epoch 10
            for round_ in range(1, args.rounds + 1):
                for code in args.code or [HERE]:
                    await forget_epoch(dsn)
                    say(f"round {round_}, {code}:")
                    await close_in_child(dsn, code, genesis, length)
            await export_size(dsn)


async def export_size(dsn: str) -> None:
    """The last close's whole manifest as GET /v1/epochs/{n}/manifest/export streams it."""
    from ingest.adapters.db import create_pool
    from ingest.adapters.store import ReadStore

    pool = await create_pool(dsn, min_size=1, max_size=2)
    size = 0

    async def count(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)

    try:
        t = time.perf_counter()
        await ReadStore(pool).copy_manifest(EPOCH, count)
        say(f"manifest export: {size / 1e6:.1f} MB in {time.perf_counter() - t:.2f} s (this process)")
    finally:
        await pool.close()


async def seed(conn: Any, args: argparse.Namespace, t0: int, pool_cells: list[int], ids: list[bytes]) -> None:
    """One day from t0: device d's readings walk `cells / devices` cells of the pool, 1 in 50 flagged."""
    per_device = args.readings // args.devices
    cells_per_device = max(1, args.cells // args.devices)
    stay = max(1, per_device // cells_per_device)  # readings in one cell before moving on
    ensure = "SELECT depin_ensure_readings_partitions(to_timestamp($1 / 1000.0), now() + '1 day')"
    await conn.execute(ensure, t0)
    columns = ("ts", "device_id", "seq", "idx", "lat", "lon", "cell", "kind", "vals", "flags")
    started, done, step = time.perf_counter(), 0, DAY_MS // per_device
    for d in range(args.devices):
        rows = []
        for g in range(per_device):
            cell = pool_cells[(d * cells_per_device + g // stay) % args.cells]
            ts = datetime.fromtimestamp((t0 + g * step + d % step) / 1000, UTC)
            rows.append((ts, ids[d], g + 1, 0, 52.5, 13.4, cell, "weather", "{}", int(g % 50 == 0)))
        await conn.copy_records_to_table("readings", records=rows, columns=columns)
        done += len(rows)
        if d % 1000 == 999:
            say(f"  seeded {done:>11,} readings ({done / (time.perf_counter() - started):,.0f}/s)")
    await conn.execute("ANALYZE readings")


async def forget_epoch(dsn: str) -> None:
    """Drop the bench epoch's result (and vacuum), so the next close starts from the same tables."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for table in ("device_rewards", "owner_rewards", "epoch_cells", "epochs"):
                await conn.execute(f"DELETE FROM {table} WHERE epoch = {EPOCH}")
        await conn.execute("VACUUM device_rewards, owner_rewards, epoch_cells, epochs")
    finally:
        await conn.close()


async def close_in_child(dsn: str, code: Path, genesis: int, length: int) -> None:
    """`Epochs.close` in a fresh process importing `ingest` from `code` (its peak memory is the
    closer's alone: no seeding in it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--close-only",
        dsn,
        "--genesis",
        str(genesis),
        "--length",
        str(length),
        "--code",
        str(code),
    )
    if await proc.wait() != 0:
        raise SystemExit(f"the close with {code} failed")


async def close_only(args: argparse.Namespace) -> None:
    from ingest.adapters.db import create_pool
    from ingest.adapters.store import EpochStore
    from ingest.epochs import EpochConfig, Epochs

    pool = await create_pool(args.close_only, min_size=2, max_size=4)
    try:
        store = EpochStore(pool)
        epochs = Epochs(store, None, EpochConfig(args.genesis, args.length, 10_000 * 10**18))
        before = peak_mb()
        t = time.perf_counter()
        row = await epochs.close(EPOCH)
        took = time.perf_counter() - t
        size = await pool.fetchval(f"SELECT pg_column_size(manifest) FROM epochs WHERE epoch = {EPOCH}")
        parts = getattr(epochs, "last_close_parts", None)
        for name, seconds, peak in parts.done if parts else ():
            say(f"  {name:<8} {seconds:6.2f} s   peak RSS {peak:6.0f} MB")
        say(
            f"  Epochs.close: {took:.2f} s ({row.status}; allocated {row.allocated}; epochs.manifest "
            f"{size / 1e6:.2f} MB stored); peak RSS {before:,.0f} MB before the close, "
            f"{peak_mb():,.0f} MB after"
        )
    finally:
        await pool.close()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readings", type=int, default=10_000_000)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--cells", type=int, default=50_000)
    p.add_argument("--owners", type=int, default=2_000)
    p.add_argument(
        "--code",
        type=Path,
        action="append",
        help="close with `ingest` from this checkout (repeat it: each round closes with each, in turn)",
    )
    p.add_argument(
        "--pgdata",
        type=Path,
        help="keep PostgreSQL's data here and reuse readings seeded there before with the same shape",
    )
    p.add_argument("--rounds", type=int, default=1, help="closes per checkout, interleaved (default 1)")
    p.add_argument("--close-only", metavar="DSN", help=argparse.SUPPRESS)  # the child: close, print
    p.add_argument("--genesis", type=int, help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    ns = parse()
    if ns.close_only:
        sys.path.insert(0, str(ns.code[0]))
        asyncio.run(close_only(ns))
    else:
        sys.path.insert(0, str(HERE))
        asyncio.run(main(ns))
