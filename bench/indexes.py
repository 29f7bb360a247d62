"""What the readings indexes cost a batch's COPY, in PostgreSQL CPU per row.

    .venv/bin/python bench/indexes.py [--rows 200000] [--rounds 3] [--batch 1000]

The same readings-shaped rows (2,000 stations and dashcams around San Francisco at res 9/7/8, one
reading each per second, as bench/ingest.py's fleet) COPYed `--batch` rows at a time into a fresh
table under each index set in turn, the sets interleaved over `--rounds` rounds, in an embedded
PostgreSQL. The figure is the backend's own CPU time (/proc/<pid>/stat) per row, so neither the
client's encoding nor other processes on a shared machine count:

- BRIN on ts alone (every set has it): the COPY without B-tree indexes;
- migration 002's: UNIQUE (device_id, ts, seq, idx) and (cell, ts);
- migration 013's: (depin_cell7(cell), ts, cell) and (hashbyteaextended(device_id, 0), ts);
- 013's with the block function in PL/pgSQL (not inlined): what an expression that is not a plain
  SQL expression would cost;
- 013's on stored columns (block and device hash computed by the client and COPYed): what
  evaluating the expressions costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import h3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.adapters.db import _init_connection, embedded_postgres, recreate_database  # noqa: E402
from ingest.core.placescan import block_of  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
_COLUMNS = (
    "ts timestamptz, device_id bytea, seq bigint, idx smallint, lat float8, lon float8, acc real, alt real,"
    " cell bigint, kind text, vals jsonb, media_sha256 bytea, media_uri text, flags int, block bigint,"
    " dev_hash bigint"
)
_NAMES = ["ts", "device_id", "seq", "idx", "lat", "lon", "acc", "alt", "cell", "kind", "vals", "flags"]
_NAMES += ["block", "dev_hash"]  # filled for every set (same row width), indexed only by the last
_FUNCTIONS = """
CREATE OR REPLACE FUNCTION depin_cell7(cell bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN ((cell >> 52) & 15) > 7 THEN (cell & 9155818042427441152) | 31525197408370687
                ELSE cell END
$fn$;
CREATE OR REPLACE FUNCTION cell7_plpgsql(cell bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
    RETURN CASE WHEN ((cell >> 52) & 15) > 7 THEN (cell & 9155818042427441152) | 31525197408370687
                ELSE cell END;
END $fn$;
"""
SETS: dict[str, list[str]] = {
    "BRIN (ts) only": [],
    "002: UNIQUE (device_id, ts, seq, idx), (cell, ts)": [
        "ALTER TABLE {t} ADD CONSTRAINT {t}_key UNIQUE (device_id, ts, seq, idx)",
        "CREATE INDEX ON {t} (cell, ts)",
    ],
    "013: (depin_cell7(cell), ts, cell), (hashbyteaextended(device_id, 0), ts)": [
        "CREATE INDEX ON {t} (depin_cell7(cell), ts, cell)",
        "CREATE INDEX ON {t} (hashbyteaextended(device_id, 0), ts)",
    ],
    "013, block function in PL/pgSQL": [
        "CREATE INDEX ON {t} (cell7_plpgsql(cell), ts, cell)",
        "CREATE INDEX ON {t} (hashbyteaextended(device_id, 0), ts)",
    ],
    "013 on stored columns (block, dev_hash)": [
        "CREATE INDEX ON {t} (block, ts, cell)",
        "CREATE INDEX ON {t} (dev_hash, ts)",
    ],
}


def readings(n: int, devices: int = 2000, seed: int = 1) -> list[tuple[Any, ...]]:
    rnd = random.Random(seed)
    fleet = []
    for i in range(devices):
        lat, lon = 37.7749 + rnd.uniform(-0.08, 0.08), -122.4194 + rnd.uniform(-0.1, 0.1)
        cell = int(h3.latlng_to_cell(lat, lon, (9, 7, 8)[i % 3]), 16)
        fleet.append((rnd.randbytes(32), lat, lon, cell, ("dashcam", "weather", "air")[i % 3]))
    t0 = datetime.now(UTC)
    rows = []
    for k in range(n):
        dev, lat, lon, cell, kind = fleet[k % devices]
        ts = t0 + timedelta(milliseconds=k * 1000 // devices)
        dev_hash = int.from_bytes(dev[:8], "big", signed=True)
        vals = {"t": 20.5, "h": 40}
        rows.append(
            (ts, dev, k // devices + 1, 0, lat, lon, 5.0, 10.0, cell, kind, vals, 0, block_of(cell), dev_hash)
        )
    return rows


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def main(args: argparse.Namespace) -> None:
    rows = readings(args.rows)
    per_row: dict[str, list[float]] = {name: [] for name in SETS}
    with tempfile.TemporaryDirectory(prefix="depin-bench-idx-") as tmp:
        async with embedded_postgres(Path(tmp) / "pg") as admin_dsn:
            conn = await asyncpg.connect(await recreate_database(admin_dsn, "bench_indexes"))
            try:
                await _init_connection(conn)
                await conn.execute(_FUNCTIONS)
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                for r in range(args.rounds):
                    for i, (name, ddl) in enumerate(SETS.items()):
                        t = f"readings_{i}"
                        await conn.execute(
                            f"DROP TABLE IF EXISTS {t}; CREATE TABLE {t} ({_COLUMNS});"
                            f" CREATE INDEX ON {t} USING brin (ts)"
                        )
                        for statement in ddl:
                            await conn.execute(statement.format(t=t))
                        before = backend_cpu(pid)
                        for k in range(0, len(rows), args.batch):
                            await conn.copy_records_to_table(
                                t, columns=_NAMES, records=rows[k : k + args.batch]
                            )
                        per_row[name].append((backend_cpu(pid) - before) / len(rows) * 1e6)
                        print(f"round {r + 1}, {name}: {per_row[name][-1]:.2f} µs/row", flush=True)
            finally:
                await conn.close()
    print(
        f"\nPostgreSQL CPU per row COPYed, {args.rows:,} rows in batches of {args.batch:,},"
        f" medians of {args.rounds}:"
    )
    for name, runs in per_row.items():
        print(f"  {name}: {statistics.median(runs):.2f} µs (runs {' / '.join(f'{x:.2f}' for x in runs)})")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000, help="rows COPYed per index set and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, the sets interleaved in each")
    p.add_argument("--batch", type=int, default=1000, help="rows per COPY (a live batch: ~1,000)")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
