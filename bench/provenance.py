"""What keeping envelopes and per-device epoch counts costs the write path, and envelopes' storage.

`IngestStore.write_batch` on an embedded PostgreSQL, four variants run interleaved (a shared machine
drifts; interleaving spreads the drift over all of them), each on emptied tables, for two shapes:
1 reading/packet in batches of 2,000 packets and 10 readings/packet in batches of 500:

- `main`: neither (the write path before migration 010: envelope NULL, the counts UPSERT skipped);
- `+envelope`: the envelope written; `+counts`: the per-device counts; `both`: as the service runs.

Envelopes are real signed messages (devices.sdk). Prints, per variant, the median and the best run
(on a shared machine the best is the least disturbed) and their ratio to `main`'s, then the storage:
bytes per envelope (pg_column_size) and the packets table's size per row with and without envelopes.

    .venv/bin/python bench/provenance.py [--rounds 5] [--packets 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, before bench/ (ingest.py)

from devices.keys import new_identity
from devices.protocol.model import Reading
from devices.sdk import build_message
from ingest.adapters import db
from ingest.adapters.store import IngestStore
from ingest.adapters.store import ingest as ingest_module
from ingest.model import AcceptedPacket

VARIANTS = ("main", "+envelope", "+counts", "both")
_real_counts = ingest_module.add_device_counts


async def _no_counts(*_: Any) -> None:
    return None


def make_packets(n_packets: int, per_packet: int, devices: int, t0: int) -> list[AcceptedPacket]:
    idents = [new_identity() for _ in range(devices)]
    seqs = [0] * devices
    out = []
    for i in range(n_packets):
        d = i % devices
        seqs[d] += 1
        ts0 = t0 + i * 10
        vals = {"temperature_c": 12.5 + i % 7, "humidity_pct": 61}
        readings = tuple(
            Reading(ts0 + k, 37.77 + d * 1e-4, -122.42 + k * 1e-5, vals, acc=3.5, alt=12.0)
            for k in range(per_packet)
        )
        msg = build_message(idents[d], seqs[d], "weather", readings)
        digest = hashlib.sha256(msg).digest()
        cells, flags = (0x872830828FFFFFF,) * per_packet, (0,) * per_packet
        out.append(
            AcceptedPacket(
                idents[d].device_id, seqs[d], "weather", digest, ts0 + per_packet, readings, cells, flags,
                digest, msg,
            )
        )  # fmt: skip
    return out


async def one_run(store: IngestStore, packets: Sequence[AcceptedPacket], batch: int, variant: str) -> float:
    await store.pool.execute("TRUNCATE packets, readings, device_epoch_counts, stats_counters, media")
    envelope = variant in ("+envelope", "both")
    counting = variant in ("+counts", "both")
    ingest_module.add_device_counts = _real_counts if counting else _no_counts  # type: ignore[assignment]
    todo = [p if envelope else _without_envelope(p) for p in packets]
    started = time.perf_counter()
    for i in range(0, len(todo), batch):
        await store.write_batch(todo[i : i + batch], [])
    return time.perf_counter() - started


def _without_envelope(p: AcceptedPacket) -> AcceptedPacket:
    return AcceptedPacket(
        p.device_id,
        p.seq,
        p.kind,
        p.payload_digest,
        p.received_ms,
        p.readings,
        p.cells,
        p.flags,
        p.message_digest,
    )


async def main(rounds: int, n_packets: int) -> None:
    async with db.embedded_postgres() as dsn:
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        await db.migrate(pool)
        t0 = int(time.time() * 1000) - 3_600_000
        store = IngestStore(pool, epoch_genesis_ms=t0 - 86_400_000, epoch_length_ms=86_400_000)
        shapes = {
            "1 reading/packet": (make_packets(n_packets, 1, 2000, t0), 2000),
            "10 readings/packet": (make_packets(n_packets // 4, 10, 2000, t0), 500),
        }
        for label, (packets, batch) in shapes.items():
            await one_run(store, packets[:batch], batch, "both")  # warm: staging tables, partitions
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(rounds):
                order = list(VARIANTS)
                random.shuffle(order)
                for v in order:
                    times[v].append(await one_run(store, packets, batch, v))
            readings = sum(len(p.readings) for p in packets)
            base = statistics.median(times["main"])
            print(f"\n{label}: {len(packets):,} packets, {readings:,} readings, batches of {batch}, ", end="")
            print(f"{rounds} rounds")
            best = min(times["main"])
            for v in VARIANTS:
                med, low = statistics.median(times[v]), min(times[v])
                print(
                    f"  {v:<10} median {len(packets) / med:>7,.0f} packets/s {readings / med:>7,.0f} rd/s "
                    f"({med / base:.2f} × main's); best {readings / low:>7,.0f} rd/s ({low / best:.2f} × "
                    f"main's); runs {', '.join(f'{t:.2f}' for t in times[v])} s"
                )
            # Storage, after a `both` run and a `main` run.
            sizes = {}
            for v in ("both", "main"):
                await one_run(store, packets, batch, v)
                await pool.execute("VACUUM ANALYZE packets")
                sizes[v] = await pool.fetchrow(
                    """SELECT pg_table_size('packets')::float8 / count(*) AS table_per_row,
                              avg(pg_column_size(envelope)) AS column, avg(octet_length(envelope)) AS raw
                       FROM packets"""
                )
            counts = await pool.fetchval("SELECT pg_total_relation_size('device_epoch_counts')")
            per_reading = await pool.fetchval(
                """SELECT sum(pg_total_relation_size(inhrelid))::float8 / (SELECT count(*) FROM readings)
                   FROM pg_inherits WHERE inhparent = 'readings'::regclass"""
            )
            b, m = sizes["both"], sizes["main"]
            print(
                f"  storage: envelope {b['raw']:.0f} bytes raw, {b['column']:.0f} stored (pg_column_size); "
                f"packets table {m['table_per_row']:.0f} → {b['table_per_row']:.0f} bytes/packet "
                f"(+{b['table_per_row'] - m['table_per_row']:.0f}); "
                f"device_epoch_counts {counts / 1024:.0f} KiB for 2,000 devices × 1 epoch; "
                f"readings with indexes {per_reading:.0f} bytes/reading"
            )
        await pool.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--packets", type=int, default=20_000)
    a = ap.parse_args()
    asyncio.run(main(a.rounds, a.packets))
