"""The buyers' API under load (issue 13, "Storage and speed").

Seeds `--readings` readings of `--devices` stations spread over Berlin over one day (yesterday, UTC)
with COPY into a fresh embedded PostgreSQL (its hours rolled up by the service's refresher, as the
`epochs` part keeps them), registers the stations in the registry mirror and closes
that day's epoch with the service's own closer (ingest/epochs.py: seal, score, manifest, rewards), starts
`depin run --parts api` as an OS process (API keys required, one key without a rate limit) and
measures, with 1 and 16 concurrent aiohttp clients for `--seconds` each: a res-7 cell + one-day page, a
device + one-day page, a ~10 km² bbox over the day, an hourly aggregate at res 7 over a res-5 region
over a week (the seeded day and the six before it, which hold no data), `/v1/stats`, the epoch summary
`/v1/epochs/{n}` of the closed day, `/v1/epochs`, `/v1/coverage` of the closed day. With
`--api-procs N` (N > 1) the 16-client rows are measured again with N API processes sharing the port
(DEPIN_API_REUSE_PORT). Then a whole-day CSV export of a res-7 cell (rows/s, bytes counted as
streamed), the metering overhead (the cell and the device query on a second process with
DEPIN_API_KEYS=off and no key) and the readings' table and index sizes. Each figure is printed beside
the issue's target with ✓/✗, each load row with the CPU the load generator itself used.

    .venv/bin/python bench/api.py [--readings 1000000] [--devices 10000] [--seconds 5] [--api-procs N]
                                  [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import aiohttp
import asyncpg
import h3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository, before bench/ (ingest.py)

from devices.protocol.model import DeviceRecord  # noqa: E402
from ingest.adapters.db import create_pool, embedded_postgres, migrate  # noqa: E402
from ingest.adapters.store import EpochStore, MirrorStore  # noqa: E402
from ingest.adapters.store.keys import KeyStore  # noqa: E402
from ingest.adapters.store.partitions import PartitionStore  # noqa: E402
from ingest.adapters.store.rollups import RollupStore  # noqa: E402
from ingest.epochs import EpochConfig, Epochs  # noqa: E402
from ingest.rollups import refresh_once  # noqa: E402

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
CLIENTS = (1, 16)
OWNERS = 500  # the fleet's owners, for a closed epoch's owner rewards and proofs
HW_CLASS = {"weather": 2, "air": 3}  # the default hardware classes (README "Operators")
# Berlin: about 22 km × 22 km
LAT, LON = (52.4, 52.6), (13.25, 13.55)


def say(msg: str) -> None:
    print(msg, flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """Stations: even ones `air` (cell at res 8), odd ones `weather` (res 9)."""

    def __init__(self, devices: int, seed: int = 13) -> None:
        rnd = random.Random(seed)
        self.ids: list[bytes] = []
        self.lats: list[float] = []
        self.lons: list[float] = []
        self.cells: list[int] = []
        self.kinds: list[str] = []
        for i in range(devices):
            lat, lon = rnd.uniform(*LAT), rnd.uniform(*LON)
            res = 8 if i % 2 == 0 else 9
            self.ids.append(rnd.randbytes(32))
            self.lats.append(lat)
            self.lons.append(lon)
            self.cells.append(h3.str_to_int(h3.latlng_to_cell(lat, lon, res)))
            self.kinds.append("air" if res == 8 else "weather")


async def seed(dsn: str, fleet: Fleet, readings: int, t0: int) -> None:
    """`readings` readings over [t0, t0 + 1 day), round-robin over the fleet, by COPY in chunks."""
    devices = len(fleet.ids)
    per_device = max(1, readings // devices)
    step = DAY_MS // per_device
    conn = await asyncpg.connect(dsn)
    try:
        # The week the aggregate spans has its daily partitions, empty but for the seeded day.
        await conn.execute(
            "SELECT depin_ensure_readings_partitions(to_timestamp($1 / 1000.0), now() + interval '1 day')",
            t0 + DAY_MS - WEEK_MS,
        )
        columns = ("ts", "device_id", "seq", "idx", "lat", "lon", "acc", "cell", "kind", "vals")
        chunk = 100_000
        started = time.perf_counter()
        done = 0
        while done < readings:
            n = min(chunk, readings - done)
            rows = []
            for i in range(done, done + n):
                d, g = i % devices, i // devices
                ts_ms = t0 + g * step + (d * 7919) % step
                ts = datetime.fromtimestamp(ts_ms / 1000, UTC)
                if fleet.kinds[d] == "air":
                    vals = f'{{"pm25": {g % 50 + 0.5}, "pm10": {g % 80 + 1.5}}}'
                else:
                    vals = (
                        f'{{"temperature_c": {10 + g % 15 + d % 7 * 0.1:.1f}, "humidity_pct": {40 + g % 50}}}'
                    )
                rows.append(
                    (ts, fleet.ids[d], g + 1, 0, fleet.lats[d], fleet.lons[d], 3.5, fleet.cells[d],
                     fleet.kinds[d], vals)
                )  # fmt: skip
            await conn.copy_records_to_table("readings", records=rows, columns=columns)
            done += n
            rate = done / (time.perf_counter() - started)
            say(f"  seeded {done:>11,} / {readings:,} readings ({rate:,.0f}/s)")
        say("  ANALYZE readings …")
        # A bulk load bypasses the batch writer: note its resolutions and dirty its hours (README
        # "Hourly rollups"), then refresh them as the `epochs` part of `depin run` would within 10 s.
        await conn.execute(
            "SELECT depin_note_resolutions(); SELECT depin_mark_hours_dirty(); ANALYZE readings"
        )
    finally:
        await conn.close()


async def refresh_rollups(pool: asyncpg.Pool) -> None:
    """The seeded day's hours rolled up by the service's refresher (ingest/rollups.py)."""
    started, hours, more = time.perf_counter(), 0, True
    while more:
        cleaned, more = await refresh_once(RollupStore(pool), time.time_ns() // 1_000_000)
        hours += cleaned
    say(f"  rolled up {hours} hours in {time.perf_counter() - started:.1f} s")


def epoch_grid() -> tuple[int, int]:
    """(genesis_ms, length_ms) as `depin run` reads them, so the bench closes the API's epoch."""
    genesis = int(os.environ.get("DEPIN_EPOCH_GENESIS_MS", 1_767_225_600_000))
    return genesis, int(float(os.environ.get("DEPIN_EPOCH_LENGTH_S", 86_400)) * 1000)


async def close_epoch(pool: asyncpg.Pool, fleet: Fleet, epoch: int) -> None:
    """The stations into the registry mirror (OWNERS owners), then `epoch` closed by the service's
    closer: sealed, scored from the readings, rewards and manifest stored, summary columns filled."""
    records = [
        DeviceRecord(d, bytes(32), "0x" + f"{i % OWNERS + 1:040x}", HW_CLASS[kind], cell, True, 1)
        for i, (d, kind, cell) in enumerate(zip(fleet.ids, fleet.kinds, fleet.cells, strict=True))
    ]
    await MirrorStore(pool).upsert_devices(records, 1)
    genesis, length = epoch_grid()
    started = time.perf_counter()
    row = await Epochs(EpochStore(pool), None, EpochConfig(genesis, length, 10_000 * 10**18)).close(epoch)
    summary = await pool.fetchrow("SELECT cells, devices, owners FROM epochs WHERE epoch = $1", epoch)
    say(
        f"  closed epoch {epoch} in {time.perf_counter() - started:.1f} s ({row.status}: "
        f"{summary['cells']:,} cells, {summary['devices']:,} device rows, {summary['owners']:,} owners)"
    )


class Api:
    """`depin run --parts api` as an OS process; `port` given: on that port (with `reuse`, beside
    other API processes on it: DEPIN_API_REUSE_PORT)."""

    def __init__(self, dsn: str, keys: str, log: Path, *, port: int = 0, reuse: bool = False) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
        env.update(
            DEPIN_DATABASE_URL=dsn,
            DEPIN_API_HOST="127.0.0.1",
            DEPIN_API_PORT=str(self.port),
            DEPIN_API_KEYS=keys,
            DEPIN_API_REUSE_PORT="true" if reuse else "false",
            PYTHONUNBUFFERED="1",
        )
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingest.cli", "run", "--parts", "api"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    async def ready(self, timeout: float = 60.0) -> None:
        """Until this process answers /healthz (its own pid: others may share the port)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            # A new connection each time: the kernel may hand it to another process on the port.
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200 and (await r.json()).get("pid") == self.proc.pid:
                            return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"API did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.asynccontextmanager
async def running(dsn: str, keys: str, log: Path, *, reuse: bool = False) -> AsyncIterator[Api]:
    api = Api(dsn, keys, log, reuse=reuse)
    try:
        await api.ready()
        yield api
    finally:
        api.stop()


@contextlib.asynccontextmanager
async def joined(first: Api, dsn: str, n: int, log: Path) -> AsyncIterator[None]:
    """`n` more API processes on `first`'s port (which must have been started with `reuse`)."""
    more = [Api(dsn, "required", log, port=first.port, reuse=True) for _ in range(n)]
    try:
        for api in more:
            await api.ready()
        yield
    finally:
        for api in more:
            api.stop()


Request = Callable[[aiohttp.ClientSession], Awaitable[int]]


def getter(url: str, params: dict[str, str], headers: dict[str, str]) -> Request:
    """A GET answering its status: 200, or 503 (the API busy: all its connections in use); else an error."""

    async def go(http: aiohttp.ClientSession) -> int:
        async with http.get(url, params=params, headers=headers) as r:
            body = await r.read()
            if r.status not in (200, 503):
                raise RuntimeError(f"{url} {params}: {r.status} {body[:300]!r}")
            return r.status

    return go


class Result(NamedTuple):
    p50: float  # ms, of the 200 answers
    p95: float
    rps: float  # 200 answers per second
    ok: int
    busy: int  # 503 answers
    client_cpu: float  # CPU-seconds per second the load generator (this process) used meanwhile


async def load(request: Request, clients: int, seconds: float) -> Result:
    """`clients` loops sending `request` for `seconds`."""
    times: list[float] = []
    busy = 0
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as http:
        await request(http)  # warm: a connection, the plan cache
        end = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal busy
            while time.perf_counter() < end:
                t = time.perf_counter()
                if await request(http) == 200:
                    times.append(time.perf_counter() - t)
                else:
                    busy += 1

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        cpu = (time.process_time() - cpu) / elapsed
    p50, p95 = pct(times, 0.5) * 1000, pct(times, 0.95) * 1000
    return Result(p50, p95, len(times) / elapsed, len(times), busy, cpu)


def line(label: str, clients: int, r: Result, target: str = "", procs: int = 1) -> None:
    busy = f", {r.busy:,} × 503 busy" if r.busy else ""
    who = f"{clients:>2} client{'s' if clients > 1 else ' '}" + (f" × {procs} API procs" if procs > 1 else "")
    say(
        f"  {label:<48} {who}  p50 {r.p50:8.1f} ms  "
        f"p95 {r.p95:8.1f} ms  {r.rps:8,.0f} req/s  ({r.ok:,} answered{busy}; client {r.client_cpu:.2f} CPU)"
        + (f"  {target}" if target else "")
    )


async def export_rate(url: str, params: dict[str, str], headers: dict[str, str]) -> tuple[int, int, float]:
    """(rows, bytes, seconds) of one streamed CSV export."""
    rows = size = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        started = time.perf_counter()
        async with http.get(f"{url}/v1/export", params=params, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"export: {r.status} {(await r.read())[:300]!r}")
            async for chunk in r.content.iter_chunked(1 << 16):
                size += len(chunk)
                rows += chunk.count(b"\n")
        elapsed = time.perf_counter() - started
    return rows - 1, size, elapsed  # less the header line


async def sizes(pool: asyncpg.Pool) -> tuple[int, int, int]:
    """(total, table, indexes) bytes over the readings partitions."""
    r = await pool.fetchrow(
        """SELECT sum(pg_total_relation_size(inhrelid))::bigint AS total,
                  sum(pg_relation_size(inhrelid))::bigint AS heap,
                  sum(pg_indexes_size(inhrelid))::bigint AS idx
           FROM pg_inherits WHERE inhparent = 'readings'::regclass"""
    )
    return int(r["total"] or 0), int(r["heap"] or 0), int(r["idx"] or 0)


async def main(args: argparse.Namespace) -> None:
    today = time.time_ns() // 1_000_000 // DAY_MS * DAY_MS
    t0 = today - DAY_MS  # yesterday, UTC
    day = {"from": str(t0), "to": str(today)}
    fleet = Fleet(args.devices)
    # The busiest res-7 cell, a device in it, a ~10 km² box around it, its res-5 parent.
    res7: dict[int, list[int]] = {}
    for d, c in enumerate(fleet.cells):
        res7.setdefault(h3.str_to_int(h3.cell_to_parent(h3.int_to_str(c), 7)), []).append(d)
    cell7, members = max(res7.items(), key=lambda kv: len(kv[1]))
    device = members[0]
    lat, lon = h3.cell_to_latlng(h3.int_to_str(cell7))
    half_lat, half_lon = 1.58 / 111.2, 1.58 / (111.2 * 0.6088)  # ~3.16 km square at 52.5° N
    bbox = f"{lon - half_lon:.5f},{lat - half_lat:.5f},{lon + half_lon:.5f},{lat + half_lat:.5f}"
    cell5 = h3.cell_to_parent(h3.int_to_str(cell7), 5)
    with tempfile.TemporaryDirectory(prefix="depin-bench-api-") as tmp:
        async with embedded_postgres(Path(tmp) / "pg") as dsn:
            pool = await create_pool(dsn, min_size=1, max_size=2)
            try:
                await migrate(pool)
                say(f"seeding {args.readings:,} readings from {args.devices:,} devices over one day (COPY) …")
                started = time.perf_counter()
                await seed(dsn, fleet, args.readings, t0)
                say(f"  seeded in {time.perf_counter() - started:.1f} s")
                await refresh_rollups(pool)
                genesis, length = epoch_grid()
                await close_epoch(pool, fleet, (t0 - genesis) // length + 1)
                key, _ = await KeyStore(pool).create("bench", ["read", "export"], rate=1e9, burst=1e9)
                auth = {"Authorization": f"Bearer {key}"}
                await measure(args, dsn, pool, auth, day, fleet, device, cell7, cell5, bbox, t0, Path(tmp))
            finally:
                await pool.close()


async def measure(
    args: argparse.Namespace,
    dsn: str,
    pool: asyncpg.Pool,
    auth: dict[str, str],
    day: dict[str, str],
    fleet: Fleet,
    device: int,
    cell7: int,
    cell5: str,
    bbox: str,
    t0: int,
    tmp: Path,
) -> None:
    secs = args.seconds
    page = {**day, "limit": str(args.limit)}
    cell_params = {"cell": format(cell7, "x"), **page}
    cell_big = {**cell_params, "limit": "1000"}
    box = {"bbox": bbox, **page}
    week = {"from": str(int(day["to"]) - WEEK_MS), "to": day["to"]}
    genesis, length = epoch_grid()
    epoch = (t0 - genesis) // length + 1
    procs = args.api_procs
    async with running(dsn, "required", tmp / "api.log", reuse=procs > 1) as api:
        u = api.url
        async with aiohttp.ClientSession() as http, http.get(f"{u}/v1/epochs", headers=auth) as resp:
            listed = await resp.json() if resp.status == 200 else None
        n = args.limit
        agg = {"cell": cell5, "res": "7", "bucket": "hour", "value": "pm25", **week}
        # (label, request, target, p95 bound in ms at 16 clients)
        shapes: list[tuple[str, Request, str, float | None]] = [
            (f"cell (res 7) + one day, {n} rows", getter(f"{u}/v1/readings", cell_params, auth), "", 15),
            ("cell (res 7) + one day, 1000 rows", getter(f"{u}/v1/readings", cell_big, auth), "", None),
            (
                f"device + one day, {args.limit} rows",
                getter(f"{u}/v1/readings", {"device": fleet.ids[device].hex(), **page}, auth),
                "",
                None,
            ),
            (f"bbox ~10 km², one day, {n} rows", getter(f"{u}/v1/readings", box, auth), "p95<100 ms", 100),
            (
                "aggregate hour × res 7, res-5, week (1 day data)",
                getter(f"{u}/v1/aggregates", agg, auth),
                "p95<200 ms",
                200,
            ),
            ("/v1/stats", getter(f"{u}/v1/stats", {}, auth), "p95<10 ms", 10),
            ("/v1/epochs/{n} (summary, closed day)", getter(f"{u}/v1/epochs/{epoch}", {}, auth), "p95<10 ms",
             10),
            ("/v1/epochs (list)", getter(f"{u}/v1/epochs", {}, auth), "", None),
            ("/v1/coverage (closed day)", getter(f"{u}/v1/coverage", {"epoch": str(epoch)}, auth), "", None),
        ]  # fmt: skip
        say(f"\nqueries, {secs:g} s each (API {u}; /v1/epochs lists {json.dumps(listed)[:120]})")
        async with (
            aiohttp.ClientSession(headers=auth) as http,
            http.get(f"{u}/v1/aggregates", params=agg) as r,
        ):
            rows = (await r.json())["rows"] if r.status == 200 else []
        summarised = sum(x["count"] for x in rows)
        say(f"  (the week's aggregate: {len(rows):,} rows summarising {summarised:,} readings)")
        for label, req, target, bound in shapes:
            for clients in CLIENTS:
                await measure_line(label, req, clients, secs, target, bound)
        if procs > 1:
            async with joined(api, dsn, procs - 1, tmp / "api-more.log"):
                say(f"\n16 clients on {procs} API processes sharing port {api.port} (DEPIN_API_REUSE_PORT):")
                for label, req, target, bound in shapes:
                    await measure_line(label, req, 16, secs, target, bound, procs)

        rows, size, elapsed = await export_rate(u, {"cell": format(cell7, "x"), **day, "format": "csv"}, auth)
        rate = rows / elapsed if elapsed else 0.0
        say(
            f"  {'export CSV, res-7 cell, whole day':<48} {rows:,} rows, {size / 1e6:.1f} MB "
            f"in {elapsed:.2f} s: "
            f"{rate:,.0f} rows/s  target ≥ 100 k rows/s {mark(rate >= 100_000)}"
        )
        # The cell page is PostgreSQL's work, the device page the API process's: metering shows there.
        dev_params = {"device": fleet.ids[device].hex(), **page}
        metered = (cell_params, dev_params)
        keyed = [await load(getter(f"{u}/v1/readings", p, auth), 16, secs) for p in metered]
    async with running(dsn, "off", tmp / "api-off.log") as off:
        free = [await load(getter(f"{off.url}/v1/readings", p, {}), 16, secs) for p in metered]
    for what, k, f in zip(("cell", "device"), keyed, free, strict=True):
        say(f"\nmetering overhead ({what} + one day, {args.limit} rows, 16 clients):")
        line("with a key (DEPIN_API_KEYS=required)", 16, k)
        line("no key (DEPIN_API_KEYS=off)", 16, f)
        say(f"  overhead: p50 {k.p50 - f.p50:+.1f} ms, req/s {(k.rps / f.rps - 1) * 100:+.0f} %")

    await report_sizes(pool, "\nreadings as written")
    # What the partition upkeep does once the day has been over DEPIN_READINGS_COMPACT_AFTER_DAYS.
    parts = PartitionStore(pool)
    started = time.perf_counter()
    for name in (await parts.partition_days()).values():
        await parts.compact_partition(name)
    await report_sizes(
        pool, f"after the day's compaction ({time.perf_counter() - started:.1f} s)", target=True
    )


async def report_sizes(pool: asyncpg.Pool, label: str, *, target: bool = False) -> None:
    total, heap, idx = await sizes(pool)
    share = idx / heap * 100 if heap else 0.0
    check = f"  target ≤ 40 % {mark(share <= 40)}" if target else ""
    say(
        f"{label}: {total / 2**20:,.0f} MiB in all, table {heap / 2**20:,.0f} MiB, "
        f"indexes {idx / 2**20:,.0f} MiB = {share:.0f} % of the table{check}"
    )
    await print_indexes(pool)


async def print_indexes(pool: asyncpg.Pool) -> None:
    per_index = await pool.fetch(
        """SELECT regexp_replace(i.relname, '^readings_p[0-9_]+', '') AS name,
                  sum(pg_relation_size(i.oid))::bigint AS size
           FROM pg_inherits h JOIN pg_index x ON x.indrelid = h.inhrelid
                JOIN pg_class i ON i.oid = x.indexrelid
           WHERE h.inhparent = 'readings'::regclass GROUP BY 1 HAVING sum(pg_relation_size(i.oid)) > 0
           ORDER BY 2 DESC"""
    )
    for r in per_index:
        say(f"  index {r['name'] or '?':<30} {r['size'] / 2**20:8,.1f} MiB")


async def measure_line(
    label: str, req: Request, clients: int, secs: float, target: str, bound: float | None, procs: int = 1
) -> None:
    try:
        r = await load(req, clients, secs)
    except RuntimeError as exc:
        say(f"  {label:<48} {clients:>2} clients  failed: {exc}")
        return
    verdict = ""
    if bound is not None and clients == 16:
        ok = r.p95 < bound and r.busy == 0
        if label.startswith("cell") and bound == 15:
            ok = ok and r.rps >= 2000
            target = "p95 < 15 ms at ≥ 2,000 req/s"
        verdict = f"target {target} {mark(ok)}"
    line(label, clients, r, verdict, procs)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--limit", type=int, default=100, help="rows per page of the readings queries (default 100)"
    )
    ap.add_argument(
        "--api-procs",
        type=int,
        default=1,
        help="N > 1: the 16-client rows again with N API processes on one port (DEPIN_API_REUSE_PORT)",
    )
    ap.add_argument("--quick", action="store_true", help="50k readings from 2,000 devices, 1 s per measure")
    a = ap.parse_args()
    if a.quick:
        a.readings, a.devices, a.seconds = 50_000, 2_000, 1.0
    return a


if __name__ == "__main__":
    asyncio.run(main(parse()))
