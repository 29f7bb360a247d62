"""Epoch close at scale (issue 14, "Speed"): `Epochs.close` of one epoch of `--readings` readings from
`--devices` devices over `--cells` H3 cells, on a fresh embedded PostgreSQL.

Seeds one day (yesterday, UTC) by COPY: device d's readings walk `--cells / --devices` cells of a
shared pool (so every cell is covered, ~5 cells per device by default), 1 reading in 50 flagged; owners
are `--owners`; half the hardware classes stationary. Then prints the coverage aggregation alone
(`EpochStore.epoch_coverage`, the SQL), the close (seal, score, rewards, manifest stored) and the peak
resident memory of this process (the service's side; PostgreSQL's own is not counted).

`--code DIR` imports `ingest` from another checkout (e.g. main, for a before/after on the same data).

    .venv/bin/python bench/epochs.py [--readings 10000000] [--devices 10000] [--cells 50000] [--code DIR]
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

DAY_MS = 86_400_000


def say(msg: str) -> None:
    print(msg, flush=True)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(args: argparse.Namespace) -> None:
    import asyncpg
    import h3

    from devices.protocol.model import DeviceRecord
    from ingest.adapters.db import create_pool, embedded_postgres, migrate
    from ingest.adapters.store import EpochStore, MirrorStore
    from ingest.epochs import EpochConfig, Epochs

    say(f"ingest from {sys.modules['ingest'].__file__}")
    rnd = random.Random(14)
    # a pool of distinct resolution-9 cells around Berlin (~150 k in the box)
    pool_cells: list[int] = []
    seen: set[int] = set()
    while len(pool_cells) < args.cells:
        c = h3.str_to_int(h3.latlng_to_cell(rnd.uniform(52.0, 53.0), rnd.uniform(12.5, 14.5), 9))
        if c not in seen:
            seen.add(c)
            pool_cells.append(c)
    ids = [rnd.randbytes(32) for _ in range(args.devices)]
    per_device = args.readings // args.devices
    cells_per_device = max(1, args.cells // args.devices)
    stay = max(1, per_device // cells_per_device)  # readings in one cell before moving on
    t0 = (time.time_ns() // 1_000_000 // DAY_MS - 1) * DAY_MS
    genesis, length = t0 - 9 * DAY_MS, DAY_MS  # the seeded day is epoch 10
    with tempfile.TemporaryDirectory() as tmp:
        async with embedded_postgres(Path(tmp) / "pg") as dsn:
            pool = await create_pool(dsn, min_size=2, max_size=4)
            await migrate(pool)
            conn = await asyncpg.connect(dsn)
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
            epochs = Epochs(store, None, EpochConfig(genesis, length, 10_000 * 10**18))
            try:  # the scoring part alone, where the checkout has it (not saved)
                from ingest.scoring import gather, score_epoch
            except ImportError:
                pass
            else:
                t = time.perf_counter()
                await gather(store, epochs.config, 10)
                say(f"gather (coverage SQL, last paid, usage, boosts): {time.perf_counter() - t:.2f} s")
                t = time.perf_counter()
                await score_epoch(store, epochs.config, 10)
                say(
                    f"score_epoch (gather, split, tree, manifest; not saved): {time.perf_counter() - t:.2f} s"
                )
            t = time.perf_counter()
            row = await epochs.close(10)
            took = time.perf_counter() - t
            size = await pool.fetchval("SELECT pg_column_size(manifest) FROM epochs WHERE epoch = 10")
            say(
                f"Epochs.close: {took:.2f} s ({row.status}; allocated {row.allocated}; "
                f"manifest {size / 1e6:.1f} MB stored); peak RSS of this process {peak_mb():,.0f} MB"
            )
            await pool.close()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readings", type=int, default=10_000_000)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--cells", type=int, default=50_000)
    p.add_argument("--owners", type=int, default=2_000)
    p.add_argument("--code", type=Path, help="import ingest from this checkout")
    return p.parse_args()


if __name__ == "__main__":
    ns = parse()
    sys.path.insert(0, str(ns.code or Path(__file__).resolve().parents[1]))
    asyncio.run(main(ns))
