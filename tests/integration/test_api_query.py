"""Buyers' queries against a real PostgreSQL: readings by parent cell, finer cell, bbox, polygon, kind
(each compared with the same selection made in Python over the seeded rows), cursors bound to the
filter, aggregates, CSV/NDJSON exports, usage charged, unknown parameters refused, EXPLAIN of every query
shape without a sequential scan of the readings, and an export from `depin run --parts api` as an OS
process whose RSS stays flat."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import random
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import asyncpg
import h3
import pytest
from aiohttp import web

from ingest.adapters.store.queries import RESOLUTIONS_SQL, QueryStore
from ingest.api.app import create_app
from ingest.api.auth import ApiAccess
from ingest.api.metering import EpochGrid, charged
from ingest.core import h3cells, metering
from ingest.core.readfilter import parse_polygon, parse_where
from ingest.service import serve_api
from tests.fixtures_keys import bearer
from tests.fixtures_pg import Store
from tests.procs import ConsumerProcess

pytestmark = pytest.mark.integration
HOUR = 3_600_000
T0 = (time.time_ns() // 1_000_000 // HOUR - 30) * HOUR  # 30 hours ago, on the hour
CLOCK = (T0 - 5 * HOUR, 12 * HOUR)  # epochs of 12 h: the seeded day spans three
BBOX = "13.35,52.45,13.45,52.52"
POLY = {
    "type": "Polygon",
    "coordinates": [[[13.3, 52.42], [13.5, 52.44], [13.42, 52.58], [13.3, 52.42]]],
}


class Row(NamedTuple):
    device: str
    seq: int
    ts: int
    lat: float
    lon: float
    cell: int
    kind: str
    pm25: float


async def seed(dsn: str, devices: int, per_device: int, step_ms: int = 60_000) -> list[Row]:
    """`devices` stations spread over Berlin (even ones `air` at res 8, odd ones `weather` at res 9),
    `per_device` readings each from T0, every `step_ms`; vals pm25 (number) and label (text)."""
    rnd = random.Random(5)
    ids, lats, lons, cells, kinds = [], [], [], [], []
    for i in range(devices):
        lat, lon = rnd.uniform(52.4, 52.6), rnd.uniform(13.25, 13.55)
        res = 8 if i % 2 == 0 else 9
        ids.append(i.to_bytes(32, "big"))
        lats.append(lat)
        lons.append(lon)
        cells.append(h3.str_to_int(h3.latlng_to_cell(lat, lon, res)))
        kinds.append("air" if res == 8 else "weather")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SELECT depin_ensure_readings_partitions(to_timestamp($1 / 1000.0) - interval '1 day', "
            "to_timestamp($1 / 1000.0) + interval '4 days')",
            T0,
        )
        await conn.execute(
            """INSERT INTO readings (ts, device_id, seq, idx, lat, lon, cell, kind, vals)
               SELECT to_timestamp(($6::bigint + g * $8::bigint) / 1000.0), d.id, g, 0, d.lat, d.lon, d.cell,
                      d.kind,
                      jsonb_build_object('pm25', (g % 50) + 0.5, 'label', 'x')
               FROM unnest($1::bytea[], $2::float8[], $3::float8[], $4::bigint[], $5::text[])
                    AS d(id, lat, lon, cell, kind),
                    generate_series(0, $7 - 1) g""",
            ids,
            lats,
            lons,
            cells,
            kinds,
            T0,
            per_device,
            step_ms,
        )
        # Written around write_batch: list the resolutions and dirty the hours, as a bulk load must.
        await conn.execute(
            "SELECT depin_note_resolutions(); SELECT depin_mark_hours_dirty(); ANALYZE readings"
        )
    finally:
        await conn.close()
    return [
        Row(ids[i].hex(), g, T0 + g * step_ms, lats[i], lons[i], cells[i], kinds[i], (g % 50) + 0.5)
        for i in range(devices)
        for g in range(per_device)
    ]


Charges = list[Counter[tuple[int, int]]]


@pytest.fixture
async def api(store: Store, pg_dsn: str) -> AsyncIterator[tuple[str, list[Row], Charges]]:
    rows = await seed(pg_dsn, 120, 30)
    charges: Charges = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        response = await handler(request)
        charges.append(Counter(charged(request)))
        return response

    async def ready() -> dict[str, Any]:
        return {"ready": True}

    # Keys off and no key sent: the request stays free, so what it was charged is still there for
    # `record` to read (with a key the middleware writes and clears it; tests/integration/test_api_keys.py).
    app = create_app(store, ready, max_rows=1000, access=ApiAccess(required=False, grid=EpochGrid(*CLOCK)))
    app.middlewares.insert(0, record)
    async with serve_api(app, "127.0.0.1", 0) as url:
        yield url, rows, charges


async def all_pages(http: aiohttp.ClientSession, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params = dict(params)
    while True:
        async with http.get(f"{url}/v1/readings", params=params) as r:
            body = await r.json()
            assert r.status == 200, body
        out += body["readings"]
        if body["next"] is None:
            return out
        params = {k: v for k, v in params.items() if k not in ("from", "to")} | {"cursor": body["next"]}


def keys(readings: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(x["device_id"], x["seq"]) for x in readings]


def window() -> dict[str, str]:
    return {"from": str(T0), "to": str(T0 + 86_400_000), "limit": "250"}


async def test_every_place_finds_exactly_its_readings(api: tuple[str, list[Row], Charges]) -> None:
    url, rows, charges = api
    some = rows[0]
    parent7 = h3cells.parent(some.cell, 7)
    fine = h3.latlng_to_cell(some.lat, some.lon, 11)
    bbox = parse_where({"bbox": BBOX}).area
    poly = parse_polygon(json.dumps(POLY))
    assert bbox is not None
    cases: list[tuple[dict[str, str], Callable[[Row], bool]]] = [
        ({"cell": format(parent7, "x")}, lambda r: h3cells.parent(r.cell, 7) == parent7),
        ({"cell": format(some.cell, "x")}, lambda r: h3cells.parent(r.cell, 8) == some.cell),
        ({"cell": fine}, lambda r: h3.latlng_to_cell(r.lat, r.lon, 11) == fine),
        ({"bbox": BBOX}, lambda r: bbox.contains(r.lon, r.lat)),
        ({"bbox": BBOX, "kind": "air"}, lambda r: bbox.contains(r.lon, r.lat) and r.kind == "air"),
        ({"polygon": json.dumps(POLY)}, lambda r: poly.contains(r.lon, r.lat)),
        (
            {"device": some.device, "bbox": BBOX},
            lambda r: r.device == some.device and bbox.contains(r.lon, r.lat),
        ),
        ({"device": some.device, "kind": some.kind}, lambda r: r.device == some.device),
    ]
    async with aiohttp.ClientSession() as http:
        for query, wanted in cases:
            charges.clear()
            got = await all_pages(http, url, {**window(), **query})
            expected = sorted((r.ts, r.device, r.seq) for r in rows if wanted(r))
            assert keys(got) == [(d, s) for _, d, s in expected], query
            # each page charged its rows: one unit per reading, per (res-7 cell, epoch)
            total: Counter[tuple[int, int]] = sum(charges, Counter())
            assert total == metering.usage_of(((int(x["cell"], 16), x["ts"]) for x in got), *CLOCK), query
    # the bbox holds rows of cells that straddle its edge: the exact test dropped their outside part
    inside = {r.cell for r in rows if bbox.contains(r.lon, r.lat)}
    assert any(not bbox.contains(r.lon, r.lat) for r in rows if r.cell in inside) or len(inside) > 3


async def test_a_cursor_is_bound_to_the_whole_filter(api: tuple[str, list[Row], Charges]) -> None:
    url, _, _ = api
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/readings", params={**window(), "bbox": BBOX, "limit": "3"}) as r:
            cursor = (await r.json())["next"]
        assert cursor
        for other in (
            {"bbox": "13.35,52.45,13.45,52.53"},
            {"bbox": BBOX, "kind": "air"},
            {"polygon": json.dumps(POLY)},
        ):
            async with http.get(f"{url}/v1/readings", params={**other, "cursor": cursor}) as r:
                assert r.status == 400, other
                assert "cursor" in (await r.json())["error"]
        async with http.get(f"{url}/v1/readings", params={"bbox": BBOX, "cursor": cursor, "limit": "3"}) as r:
            assert r.status == 200


@pytest.mark.parametrize("path", ["/v1/readings", "/v1/aggregates", "/v1/export"])
@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("device=" + "ab" * 32 + "&format_=csv", "format_"),
        ("device=" + "ab" * 32 + "&device=" + "cd" * 32, "device"),
        ("bbox=13,52,15,54", "bbox"),  # over the area cap
        ("bbox=13,52,13.1", "bbox"),
        ("polygon=%7B%7D", "polygon"),
        ("cell=88283096cdfffff&bbox=13,52,13.1,52.1", "bbox"),
        ("kind=air", "give device"),
        ("device=" + "ab" * 32 + "&kind=%00", "kind"),
        ("device=" + "ab" * 32 + "&include=media", "include"),
        ("device=" + "ab" * 32 + "&include=", "include"),
    ],
)
async def test_bad_input_is_a_json_400_naming_the_parameter(
    api: tuple[str, list[Row], Charges], path: str, query: str, param: str
) -> None:
    url, _, _ = api
    extra = {
        "/v1/readings": "",
        "/v1/aggregates": "&bucket=hour&value=pm25&res=7",
        "/v1/export": "&format=csv",
    }
    async with aiohttp.ClientSession() as http, http.get(f"{url}{path}?{query}{extra[path]}") as r:
        assert r.status == 400
        assert param in (await r.json())["error"]


async def test_aggregates_per_cell_and_per_device(api: tuple[str, list[Row], Charges]) -> None:
    url, rows, charges = api
    bbox = parse_where({"bbox": BBOX}).area
    assert bbox is not None
    groups: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for r in rows:
        if bbox.contains(r.lon, r.lat):
            groups[(format(h3cells.parent(r.cell, 7), "x"), r.ts // HOUR * HOUR)].append(r.pm25)
    params = {
        "bbox": BBOX,
        "res": "7",
        "bucket": "hour",
        "value": "pm25",
        "from": str(T0),
        "to": str(T0 + 86_400_000),
    }
    async with aiohttp.ClientSession() as http:
        charges.clear()
        async with http.get(f"{url}/v1/aggregates", params=params) as r:
            body = await r.json()
            assert r.status == 200, body
        got = {(x["cell"], x["t"]): (x["count"], x["min"], x["max"], x["avg"]) for x in body["rows"]}
        want = {k: (len(v), min(v), max(v), pytest.approx(statistics.fmean(v))) for k, v in groups.items()}
        assert got == want
        summarised = Counter(
            (metering.meter_cell(r.cell), metering.epoch_of(r.ts, *CLOCK))
            for r in rows
            if bbox.contains(r.lon, r.lat)
        )
        assert charges[-1] == {k: metering.aggregated_units(n) for k, n in summarised.items()}

        device = rows[0].device
        params = {
            "device": device,
            "bucket": "day",
            "value": "pm25",
            "from": str(T0),
            "to": str(T0 + 86_400_000),
        }
        async with http.get(f"{url}/v1/aggregates", params=params) as r:
            body = await r.json()
        mine = [r.pm25 for r in rows if r.device == device]
        assert [(x["device_id"], x["cell"], x["count"], x["max"]) for x in body["rows"]] == [
            (device, None, len(mine), max(mine))
        ]
        async with http.get(f"{url}/v1/aggregates", params={**params, "value": "label"}) as r:
            assert (await r.json())["rows"] == []  # a text value is not aggregated
        async with http.get(
            f"{url}/v1/aggregates", params={"bbox": BBOX, "bucket": "hour", "value": "pm25"}
        ) as r:
            assert r.status == 400 and "res" in (await r.json())["error"]


async def test_exports_stream_the_same_readings(api: tuple[str, list[Row], Charges]) -> None:
    url, _, charges = api
    base = {"polygon": json.dumps(POLY), "from": str(T0), "to": str(T0 + 86_400_000)}
    async with aiohttp.ClientSession() as http:
        expected = await all_pages(http, url, {**base, "limit": "1000"})
        charges.clear()
        async with http.get(f"{url}/v1/export", params={**base, "format": "csv"}) as r:
            assert r.status == 200 and r.content_type == "text/csv"
            text = await r.text()
        assert charges[-1] == metering.usage_of(((int(x["cell"], 16), x["ts"]) for x in expected), *CLOCK)
        table = list(csv.DictReader(io.StringIO(text)))
        assert list(table[0]) == [
            "ts_ms", "device_id", "seq", "idx", "lat", "lon", "acc", "alt", "cell", "kind", "vals",
            "media_sha256", "media_uri", "flags",
        ]  # fmt: skip
        assert [(x["device_id"], int(x["seq"])) for x in table] == keys(expected)
        assert [(int(x["ts_ms"]), x["cell"], json.loads(x["vals"])) for x in table] == [
            (x["ts"], x["cell"], x["vals"]) for x in expected
        ]
        async with http.get(f"{url}/v1/export", params={**base, "format": "ndjson"}) as r:
            assert r.status == 200 and r.content_type == "application/x-ndjson"
            lines = (await r.text()).splitlines()
        assert [json.loads(line) for line in lines] == expected
        async with http.get(f"{url}/v1/export", params={**base, "format": "parquet"}) as r:
            assert r.status == 400 and "format" in (await r.json())["error"]
        async with http.get(f"{url}/v1/export", params={**base, "from": "0", "format": "csv"}) as r:
            assert r.status == 400 and "366 days" in (await r.json())["error"]


async def seed_packets(dsn: str, rows: list[Row]) -> dict[tuple[str, int], bytes | None]:
    """A packet row for each seeded (device, seq): an envelope of 40-140 random bytes (longer than
    encode's 76-character base64 lines), none for every seventh packet (stored before migration 010)."""
    rnd = random.Random(11)
    envelopes = {
        (r.device, r.seq): None if i % 7 == 3 else rnd.randbytes(rnd.randint(40, 140))
        for i, r in enumerate(rows)
    }
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO packets (device_id, seq, payload_digest, kind, n_readings, received_at, envelope) "
            "SELECT d, s, '\\x00', 'air', 1, now(), e FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) "
            "AS k(d, s, e)",
            [bytes.fromhex(d) for d, _ in envelopes],
            [s for _, s in envelopes],
            list(envelopes.values()),
        )
        await conn.execute("ANALYZE packets")
    finally:
        await conn.close()
    return envelopes


def b64(envelope: bytes | None) -> str | None:
    return None if envelope is None else base64.b64encode(envelope).decode()


async def test_include_envelope_carries_each_readings_packet_envelope(
    api: tuple[str, list[Row], Charges], pg_dsn: str
) -> None:
    url, rows, _ = api
    stored = await seed_packets(pg_dsn, rows)
    base = {"polygon": json.dumps(POLY), "from": str(T0), "to": str(T0 + 86_400_000)}
    async with aiohttp.ClientSession() as http:
        plain = await all_pages(http, url, {**base, "limit": "97"})
        assert plain and all("envelope" not in x for x in plain)
        # The same pages (a cursor names the same rows), each reading with its packet's envelope.
        enveloped = await all_pages(http, url, {**base, "limit": "97", "include": "envelope"})
        assert [{k: v for k, v in x.items() if k != "envelope"} for x in enveloped] == plain
        assert [x["envelope"] for x in enveloped] == [b64(stored[k]) for k in keys(plain)]
        assert any(x["envelope"] is None for x in enveloped) and any(x["envelope"] for x in enveloped)
        async with http.get(
            f"{url}/v1/export", params={**base, "format": "ndjson", "include": "envelope"}
        ) as r:
            assert r.status == 200
            assert [json.loads(line) for line in (await r.text()).splitlines()] == enveloped
        async with http.get(f"{url}/v1/export", params={**base, "format": "csv", "include": "envelope"}) as r:
            assert r.status == 200
            table = list(csv.DictReader(io.StringIO(await r.text())))
        assert list(table[0])[-2:] == ["flags", "envelope"]
        assert [(x["device_id"], int(x["seq"])) for x in table] == keys(plain)
        assert [x["envelope"] for x in table] == [b64(stored[k]) or "" for k in keys(plain)]
        async with http.get(f"{url}/v1/export", params={**base, "format": "csv"}) as r:
            assert "envelope" not in (await r.text()).splitlines()[0]


async def test_the_sql_polygon_test_is_the_python_one(store: Store) -> None:
    rnd = random.Random(3)
    holed = dict(
        POLY,
        coordinates=[*POLY["coordinates"], [[13.38, 52.47], [13.42, 52.47], [13.4, 52.5], [13.38, 52.47]]],
    )
    area = parse_polygon(json.dumps(holed))
    x1, y1, x2, y2 = (list(c) for c in zip(*area.edges(), strict=True))
    points = [(rnd.uniform(13.25, 13.55), rnd.uniform(52.4, 52.6)) for _ in range(2000)]
    got = await store.pool.fetch(
        "SELECT depin_in_polygon(p.x, p.y, $3, $4, $5, $6) AS inside "
        "FROM unnest($1::float8[], $2::float8[]) WITH ORDINALITY AS p(x, y, i) ORDER BY i",
        [p[0] for p in points],
        [p[1] for p in points],
        x1,
        y1,
        x2,
        y2,
    )
    assert [r["inside"] for r in got] == [area.contains(*p) for p in points]
    assert 100 < sum(r["inside"] for r in got) < 1900


class Explaining:
    """A pool stand-in that EXPLAINs the statements QueryStore sends instead of running them."""

    def __init__(self, pool: asyncpg.Pool, options: str = "FORMAT JSON") -> None:
        self.pool = pool
        self.options = options
        self.plans: list[tuple[str, Any]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        if sql == RESOLUTIONS_SQL:
            return list(await self.pool.fetch(sql, *args))
        plan = await self.pool.fetchval(f"EXPLAIN ({self.options}) {sql}", *args)
        self.plans.append((sql, json.loads(plan) if isinstance(plan, str) else plan))
        return []


def scans(node: dict[str, Any]) -> list[tuple[str, str]]:
    out = [(node["Node Type"], node.get("Relation Name", ""))]
    for child in node.get("Plans", []):
        out += scans(child)
    return out


def rows_read(node: dict[str, Any]) -> int:
    """Rows the plan's readings index scans returned (EXPLAIN ANALYZE: per loop × loops)."""
    own = 0
    if "Index" in node["Node Type"] and node.get("Index Name", "").startswith("readings"):
        own = int(node["Actual Rows"] * node["Actual Loops"])
    return own + sum(rows_read(child) for child in node.get("Plans", []))


async def test_every_query_shape_uses_an_index(store: Store, pg_dsn: str) -> None:
    """200k readings over ~3 days: no query shape reads a readings partition sequentially."""
    rows = await seed(pg_dsn, 1000, 200, step_ms=20 * 60_000)
    await seed_packets(pg_dsn, rows)
    some = rows[0]
    day = (T0 + 86_400_000, T0 + 2 * 86_400_000)
    wheres = {
        "device": {"device": some.device},
        "device+kind": {"device": some.device, "kind": "air"},
        "cell": {"cell": format(some.cell, "x")},
        "parent cell": {"cell": format(h3cells.parent(some.cell, 7), "x")},
        "finer cell": {"cell": h3.latlng_to_cell(some.lat, some.lon, 12)},
        "bbox": {"bbox": "13.38,52.48,13.42,52.5"},
        "polygon": {"polygon": json.dumps(POLY)},
    }
    explaining = Explaining(store.pool)
    queries = QueryStore(explaining)  # type: ignore[arg-type]
    full = {
        r["p"] for r in await store.pool.fetch("SELECT DISTINCT tableoid::regclass::text AS p FROM readings")
    } | {"packets"}

    def seq_scans(plan: Any) -> list[str]:  # of a partition holding rows (an empty one costs nothing)
        return [rel for node, rel in scans(plan[0]["Plan"]) if node == "Seq Scan" and rel in full]

    assert len(full) >= 3
    assert not seq_scans(json.loads(await store.pool.fetchval(f"EXPLAIN (FORMAT JSON) {RESOLUTIONS_SQL}")))
    for name, q in wheres.items():
        f = parse_where(q).between(*day)
        await queries.readings(f, limit=1000, max_bytes=2 * 1024 * 1024)
        await queries.readings(f, limit=1000, after=(day[0] + 3_600_000, b"\x00" * 32, 0, 0))
        await queries.usage(f, *CLOCK)
        await queries.aggregates(f, res=7, by_device=False, bucket="hour", value="pm25", max_rows=10_000)
        for fmt in ("csv", "ndjson"):
            sql, args = await queries.export_sql(f, fmt, envelope=True)
            await explaining.fetch(sql, *args)
        sql, args = await queries.export_sql(f, "csv")
        await explaining.fetch(sql, *args)
        await queries.envelopes([(bytes.fromhex(r.device), r.seq) for r in rows[:1000]])
        for sql, plan in explaining.plans:
            seq = seq_scans(plan)
            assert not seq, f"{name}: sequential scan of {seq} in\n{sql}\n{json.dumps(plan, indent=1)[:3000]}"
        assert len(explaining.plans) == 8
        explaining.plans.clear()


async def test_a_page_reads_its_rows_not_the_whole_place(store: Store, pg_dsn: str) -> None:
    """30,000 readings in one res-7 block: a page of 100 over the block (or its res-5 region) reads
    about 100 index entries per block holding data (readings_block_ts in time order), where the old
    readings_cell_ts plan sorted every row of the place before its LIMIT."""
    rnd = random.Random(3)
    center = h3.str_to_int(h3.latlng_to_cell(52.52, 13.40, 7))
    lat0, lon0 = h3.cell_to_latlng(h3.int_to_str(center))
    points = [(lat0 + rnd.uniform(-0.004, 0.004), lon0 + rnd.uniform(-0.006, 0.006)) for _ in range(200)]
    cells = [h3.str_to_int(h3.latlng_to_cell(lat, lon, 9)) for lat, lon in points]
    async with store.pool.acquire() as conn:
        await conn.execute(
            "SELECT depin_ensure_readings_partitions(to_timestamp($1 / 1000.0), to_timestamp($1 / 1000.0))",
            T0,
        )
        await conn.execute(
            """INSERT INTO readings (ts, device_id, seq, idx, lat, lon, cell, kind, vals)
               SELECT to_timestamp(($5::bigint + g * 60000 + d.n * 250) / 1000.0), d.id, g, 0,
                      d.lat, d.lon, d.cell, 'weather', '{}'
               FROM unnest($1::bytea[], $2::float8[], $3::float8[], $4::bigint[]) WITH ORDINALITY
                    AS d(id, lat, lon, cell, n),
                    generate_series(0, 149) g""",
            [i.to_bytes(32, "big") for i in range(200)],
            [p[0] for p in points],
            [p[1] for p in points],
            cells,
            T0,
        )
        await conn.execute("SELECT depin_note_resolutions(); ANALYZE readings")
    analyzing = Explaining(store.pool, "ANALYZE, FORMAT JSON")
    queries = QueryStore(analyzing)  # type: ignore[arg-type]
    blocks = len({h3cells.parent(c, 7) for c in cells})
    for cell in (center, h3cells.parent(center, 5)):
        res = h3cells.res_of(cell)
        in_place = 150 * sum(1 for c in cells if h3cells.parent(c, res) == cell)
        assert in_place >= 10_000
        await queries.readings(
            parse_where({"cell": format(cell, "x")}).between(T0, T0 + 86_400_000), limit=100
        )
        ((sql, plan),) = analyzing.plans
        analyzing.plans.clear()
        read = rows_read(plan[0]["Plan"])
        assert 100 <= read <= blocks * 110, (format(cell, "x"), read, in_place, sql)


async def test_depin_run_exports_a_large_range_with_flat_memory(
    store: Store, pg_dsn: str, tmp_path: Path, api_key: str
) -> None:
    """`depin run --parts api` as an OS process (settings from the environment) answers the query
    endpoints and streams a 300k-row export (~56 MB of CSV) while its RSS grows by far less than the
    export's size."""
    await seed(pg_dsn, 500, 600, step_ms=60_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env |= {"DEPIN_DATABASE_URL": pg_dsn, "PYTHONUNBUFFERED": "1"}
    proc = ConsumerProcess(env, tmp_path / "api.log", parts="api", wait_for_mqtt=False)
    await proc.start()
    try:
        assert proc.proc is not None
        pid = proc.proc.pid
        from tests.integration.test_api_load import rss_mb

        params = {
            "bbox": "13.25,52.4,13.55,52.6",
            "from": str(T0),
            "to": str(T0 + 2 * 86_400_000),
            "format": "csv",
        }
        # warm up: imports, pools, statement caches
        async with aiohttp.ClientSession(headers=bearer(api_key)) as http:
            async with http.get(f"{proc.url}/v1/export", params={**params, "to": str(T0 + 60_000)}) as r:
                assert r.status == 200
                await r.read()
            # the other query endpoints answer from the process too
            page = {"bbox": BBOX, "kind": "air", "from": str(T0), "to": str(T0 + HOUR), "limit": "5"}
            async with http.get(f"{proc.url}/v1/readings", params=page) as r:
                body = await r.json()
                assert r.status == 200 and len(body["readings"]) == 5 and body["next"], body
            agg = {
                "bbox": BBOX,
                "res": "7",
                "bucket": "hour",
                "value": "pm25",
                "from": str(T0),
                "to": str(T0 + HOUR),
            }
            async with http.get(f"{proc.url}/v1/aggregates", params=agg) as r:
                body = await r.json()
                assert r.status == 200 and body["rows"] and all(x["count"] > 0 for x in body["rows"]), body
            async with http.get(f"{proc.url}/v1/readings", params={**page, "colour": "red"}) as r:
                assert r.status == 400
            base = rss_mb(pid)
            peak, size, lines = base, 0, 0
            started = time.monotonic()
            async with http.get(f"{proc.url}/v1/export", params=params) as r:
                assert r.status == 200
                async for chunk in r.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    lines += chunk.count(b"\n")
                    peak = max(peak, rss_mb(pid))
                    await asyncio.sleep(0)
            took = time.monotonic() - started
        rows = lines - 1
        print(f"\nexport: {rows} rows, {size / 1e6:.0f} MB in {took:.1f} s ({rows / took:,.0f} rows/s)")
        print(f"RSS {base:.0f} → peak {peak:.0f} MB")
        assert rows == 300_000
        assert peak - base < 40, (base, peak, size)
    finally:
        await proc.stop()
