"""API keys, metering, quotas, usage and CORS on the real API and a real PostgreSQL (in process; the
same flow as a `depin run --parts api` process: test_api_keys_process.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import h3
import pytest
from aiohttp import web

from ingest.adapters.store.keys import _BEGIN_SHARED, _RECORD_USAGE, KeyStore
from ingest.adapters.store.rows import dt_to_ms, ms_to_dt
from ingest.api.app import create_app
from ingest.api.auth import ApiAccess, Keys
from ingest.api.metering import EpochGrid, charge, record_usage
from ingest.core import apikeys, metering
from ingest.service import serve_api
from tests.fixtures_keys import bearer, seed_station
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration
GRID = EpochGrid(1_700_000_000_000, 3_600_000)  # hourly epochs


async def _ready() -> dict[str, Any]:
    return {"ready": True}


async def _export(request: web.Request) -> web.StreamResponse:
    """Stands in for an export (another module's): charges before its first byte, then streams."""
    await record_usage(request, {(0x872830828FFFFFF, 3): 5})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    await response.write(b'{"row": 1}\n')
    await response.write_eof()
    return response


async def _charged_but_failing(request: web.Request) -> web.Response:
    charge(request, {(1, 1): 7})
    raise web.HTTPBadRequest(text='{"error": "bad"}', content_type="application/json")


@asynccontextmanager
async def serving(store: Store, **access: Any) -> AsyncIterator[str]:
    app = create_app(store, _ready, access=ApiAccess(grid=GRID, **access))
    # Routes of this test's own, under the rules of an export and of the readings.
    app.router.add_get("/v1/export/test-stream", _export)
    app.router.add_get("/v1/readings/test-fail", _charged_but_failing)
    async with serve_api(app, "127.0.0.1", 0) as url:
        yield url


async def _get(url: str, key: str | None = None, **headers: str) -> tuple[int, Any, Any]:
    if key is not None:
        headers.update(bearer(key))
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, body, r.headers


async def _usage_rows(store: Store, key_id: str) -> dict[tuple[int, int], int]:
    rows = await store.pool.fetch("SELECT cell, epoch, units FROM usage WHERE key_id = $1", key_id)
    return {(r["cell"], r["epoch"]): r["units"] for r in rows}


async def test_keys_scopes_and_public_endpoints(store: Store) -> None:
    now = time.time_ns() // 1_000_000
    device = (await seed_station(store, now)).hex()
    keys = KeyStore(store.pool)
    read, _ = await keys.create("reader", ("read",))
    both, _ = await keys.create("exporter", ("read", "export"))
    gone, record = await keys.create("old", ("read",))
    await keys.revoke(record.key_id)
    async with serving(store) as url:
        readings = f"{url}/v1/readings?device={device}"
        for key in (None, "dpk_" + "a" * 52, "not a key", gone):
            status, body, headers = await _get(readings, key)
            assert status == 401, (key, body)
            assert body["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        assert "revoked" in (await _get(readings, gone))[1]["error"]
        status, body, _ = await _get(readings, read)
        assert status == 200 and len(body["readings"]) == 10
        status, body, _ = await _get(f"{url}/v1/export/test-stream", read)
        assert status == 403 and "export" in body["error"]
        assert (await _get(f"{url}/v1/export/test-stream", both))[0] == 200
        for public in ("/v1/stats", "/healthz", "/openapi.json", f"/v1/devices/{device}/rejections"):
            assert (await _get(url + public))[0] == 200, public
            assert (await _get(url + public, "dpk_" + "b" * 52))[0] == 200, public  # not looked at
        assert (await _get(f"{url}/v2/nothing"))[0] == 404  # no key needed to learn it is not there
        doc = (await _get(f"{url}/openapi.json"))[1]
        assert doc["paths"]["/v1/readings"]["get"]["security"] == [{"apiKey": []}]
        assert set(doc["paths"]["/v1/readings"]["get"]["responses"]) >= {"401", "403", "429"}
        assert "security" not in doc["paths"]["/v1/stats"]["get"]
        assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


async def test_usage_is_written_per_cell_and_epoch_and_served(store: Store) -> None:
    now = time.time_ns() // 1_000_000
    device = await seed_station(store, now)
    key, record = await KeyStore(store.pool).create("buyer", ("read", "export"))
    page = await store.readings(device_id=device, start_ms=now - 86_400_000, end_ms=now)
    expected = metering.usage_of(((r.cell, r.ts_ms) for r in page.items), *GRID)
    async with serving(store) as url:
        assert (await _get(f"{url}/v1/readings?device={device.hex()}", key))[0] == 200
        assert await _usage_rows(store, record.key_id) == expected
        assert (await _get(f"{url}/v1/readings?device={device.hex()}", key))[0] == 200
        assert await _usage_rows(store, record.key_id) == {k: 2 * v for k, v in expected.items()}
        # An error is free, even when the handler charged before failing.
        assert (await _get(f"{url}/v1/readings/test-fail", key))[0] == 400
        assert (await _get(f"{url}/v1/readings?device=zz", key))[0] == 400
        # A stream records its usage before its first byte (record_usage).
        status, body, _ = await _get(f"{url}/v1/export/test-stream", key)
        assert status == 200 and body == b'{"row": 1}\n'
        rows = await _usage_rows(store, record.key_id)
        assert rows[(0x872830828FFFFFF, 3)] == 5
        status, usage, _ = await _get(f"{url}/v1/usage", key)
        assert status == 200
        served = {(int(u["cell"], 16), u["epoch"]): u["units"] for u in usage["usage"]}
        assert served == rows and usage["truncated"] is False
        assert usage["today"]["units"] == sum(rows.values()) and usage["today"]["quota"] is None
        assert usage["key_id"] == record.key_id and usage["scopes"] == ["read", "export"]
        epochs = sorted({e for _, e in rows})
        status, usage, _ = await _get(f"{url}/v1/usage?from_epoch={epochs[-1]}&to_epoch={epochs[-1]}", key)
        assert {u["epoch"] for u in usage["usage"]} == {epochs[-1]}
        assert (await _get(f"{url}/v1/usage?from_epoch=5&to_epoch=4", key))[1]["usage"] == []
        for bad in (
            "from_epoch=-1",
            "to_epoch=1e3",
            "epoch=1",
            "to_epoch=" + "9" * 20,
        ):
            status, body, _ = await _get(f"{url}/v1/usage?{bad}", key)
            assert status == 400 and body["error"], bad
    assert await store.pool.fetchval("SELECT sum(units) FROM usage_daily") == sum(rows.values())


class CountingKeyStore(KeyStore):
    writes = 0

    async def record_usage_batch(self, batch: Any, *, price: int = 0) -> dict[tuple[str, int], int]:
        self.writes += 1
        return await super().record_usage_batch(batch, price=price)


async def test_concurrent_usage_goes_out_in_shared_writes_and_adds_up(store: Store) -> None:
    """Keys.record from many requests at once: fewer writes than requests (ingest/api/usage_batch.py),
    every unit in `usage` and `usage_daily`, each caller's quota view the day's total after its write."""
    keys = KeyStore(store.pool)
    (_, a), (_, b) = await keys.create("a", ("read",)), await keys.create("b", ("read",))
    counting = CountingKeyStore(store.pool)
    process = Keys(counting, ApiAccess(grid=GRID))
    day = apikeys.utc_day(process.wall_ms())
    calls = [(a.key_id if i % 3 else b.key_id, {(0x872830828FFFFFF, 3): 2, (i % 4, 5): 1}) for i in range(20)]
    await asyncio.gather(*(process.record(key_id, units) for key_id, units in calls))
    assert 1 <= counting.writes < len(calls)
    expected: dict[tuple[int, int], int] = {}
    for key_id, units in calls:
        if key_id == a.key_id:
            for cell_epoch, n in units.items():
                expected[cell_epoch] = expected.get(cell_epoch, 0) + n
    assert await _usage_rows(store, a.key_id) == expected
    for key_id in (a.key_id, b.key_id):
        total = sum(sum(u.values()) for k, u in calls if k == key_id)
        assert await keys.used_on(key_id, day) == total == process.used_today(key_id, day)


async def test_one_statement_writes_usage_rows_before_daily_rows(store: Store) -> None:
    """The batch's statement: several keys and days at once, exact totals; each table's rows wait on an
    InitPlan over the insert before (`usage`, then `usage_spend`, then `usage_demand`, then
    `usage_daily`), the lock order that keeps concurrent writers from deadlocking; and the watermark
    is read by that statement, after the one that takes the seal lock."""
    keys = KeyStore(store.pool)
    (_, a), (_, b) = await keys.create("a", ("read",)), await keys.create("b", ("read",))
    totals = await keys.record_usage_batch(
        {
            (a.key_id, 100, 4, False): {(7, 1): 2, (8, 1): 0},
            (a.key_id, 101, 5, False): {(7, 1): 3},
            (b.key_id, 100, 4, True): {(9, 2): 4},
        },
        price=10,
    )
    assert totals == {(a.key_id, 100): 2, (a.key_id, 101): 3, (b.key_id, 100): 4}
    assert await _usage_rows(store, a.key_id) == {(7, 1): 5}  # a zero is not a row
    assert await keys.record_usage_batch({(b.key_id, 100, 4, False): {(9, 2): 1}}) == {(b.key_id, 100): 5}
    assert await keys.record_usage_batch({}) == {}
    demand = await store.pool.fetch("SELECT key_id, epoch, cell, units FROM usage_demand ORDER BY 1, 2, 3")
    assert {tuple(r) for r in demand} == {(a.key_id, 4, 7, 2), (a.key_id, 5, 7, 3), (b.key_id, 4, 9, 5)}
    spend = await store.pool.fetch("SELECT key_id, spent_epoch, cell, epoch, units, amount FROM usage_spend")
    assert [tuple(r) for r in spend] == [(b.key_id, 4, 9, 2, 4, 40)]  # the prepaid use only
    # Epoch 4 sealed: units of a query that ran in epoch 3 or 4 count in 5, the first not sealed.
    await store.seal_epoch(4, 0)
    await keys.record_usage_batch(
        {(a.key_id, 101, 3, True): {(7, 1): 1}, (a.key_id, 101, 4, True): {(8, 1): 2, (7, 1): 1}}, price=10
    )
    demand = await store.pool.fetch("SELECT epoch, cell, units FROM usage_demand WHERE key_id = $1", a.key_id)
    assert sorted(tuple(r) for r in demand) == [(4, 7, 2), (5, 7, 5), (5, 8, 2)]
    spend = await store.pool.fetch(
        "SELECT spent_epoch, cell, epoch, units FROM usage_spend WHERE key_id = $1", a.key_id
    )
    assert sorted(tuple(r) for r in spend) == [(5, 7, 1, 2), (5, 8, 1, 2)]
    plan = "\n".join(r[0] for r in await store.pool.fetch("EXPLAIN " + _RECORD_USAGE, *([[]] * 9)))
    # Each insert passes a one-time filter on an InitPlan that scans the whole insert before it first.
    assert "One-Time Filter" in plan and "InitPlan" in plan, plan
    for cte in ("u", "s", "d"):
        assert f"CTE Scan on {cte}" in plan, plan
    assert "epoch_seal" in _RECORD_USAGE and "epoch_seal" not in _BEGIN_SHARED
    assert "pg_advisory_xact_lock_shared" in _BEGIN_SHARED and "BEGIN" in _BEGIN_SHARED


async def test_quota_then_429_until_midnight(store: Store) -> None:
    now = time.time_ns() // 1_000_000
    device = (await seed_station(store, now, n=4)).hex()
    key, _ = await KeyStore(store.pool).create("small", ("read",), quota=10)
    async with serving(store) as url:
        statuses = [(await _get(f"{url}/v1/readings?device={device}", key))[0] for _ in range(3)]
        assert statuses == [200, 200, 200]  # 4 + 4 units, then 8 < 10: a third page (12 ≥ 10)
        status, body, headers = await _get(f"{url}/v1/readings?device={device}", key)
        assert status == 429 and "quota" in body["error"]
        wait = int(headers["Retry-After"])
        assert abs(wait - (86_400_000 - time.time_ns() // 1_000_000 % 86_400_000) / 1000) < 5
        assert (await _get(f"{url}/v1/usage", key))[0] == 200  # the usage stays readable


async def test_rate_limit_per_key(store: Store) -> None:
    keys = KeyStore(store.pool)
    slow, _ = await keys.create("slow", ("read",), rate=0.5, burst=2)
    other, _ = await keys.create("other", ("read",))
    async with serving(store, rate=1000.0, burst=1000.0) as url:
        statuses = [(await _get(f"{url}/v1/usage", slow))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        status, body, headers = await _get(f"{url}/v1/usage", slow)
        assert status == 429 and "rate" in body["error"] and int(headers["Retry-After"]) >= 1
        assert (await _get(f"{url}/v1/usage", other))[0] == 200  # each key its own bucket


async def test_a_revoke_takes_effect_within_the_cache_ttl(store: Store) -> None:
    keys = KeyStore(store.pool)
    key, record = await keys.create("leaving", ("read",))
    async with serving(store, cache_s=0.3) as url:
        assert (await _get(f"{url}/v1/usage", key))[0] == 200
        await keys.revoke(record.key_id)
        await asyncio.sleep(0.4)
        assert (await _get(f"{url}/v1/usage", key))[0] == 401


async def test_usage_that_cannot_be_written_fails_the_request(store: Store) -> None:
    now = time.time_ns() // 1_000_000
    device = (await seed_station(store, now)).hex()
    key, record = await KeyStore(store.pool).create("buyer", ("read", "export"))
    # A real write failure: the table refuses every new row from now on.
    await store.pool.execute("ALTER TABLE usage_daily ADD CONSTRAINT refuse CHECK (units < 0) NOT VALID")
    async with serving(store) as url:
        status, body, headers = await _get(f"{url}/v1/readings?device={device}", key)
        assert status == 503 and "usage" in body["error"] and headers["Retry-After"] == "1"
        status, body, _ = await _get(f"{url}/v1/export/test-stream", key)
        assert status == 503 and "usage" in body["error"]  # refused before its first byte
        assert (await _get(f"{url}/v1/usage", key))[0] == 200  # free: nothing to write
    assert await _usage_rows(store, record.key_id) == {}


async def test_keys_off_serves_without_a_key_and_still_meters_one(store: Store) -> None:
    now = time.time_ns() // 1_000_000
    device = (await seed_station(store, now)).hex()
    key, record = await KeyStore(store.pool).create("buyer", ("read",))
    async with serving(store, required=False) as url:
        assert (await _get(f"{url}/v1/readings?device={device}"))[0] == 200
        assert await store.pool.fetchval("SELECT count(*) FROM usage") == 0
        assert (await _get(f"{url}/v1/readings?device={device}", key))[0] == 200
        assert sum((await _usage_rows(store, record.key_id)).values()) == 10
        assert (await _get(f"{url}/v1/readings?device={device}", "dpk_" + "c" * 52))[0] == 401
        assert (await _get(f"{url}/v1/usage"))[0] == 401  # whose usage?
        doc = (await _get(f"{url}/openapi.json"))[1]
        assert doc["paths"]["/v1/readings"]["get"]["security"] == [{"apiKey": []}, {}]
        assert doc["paths"]["/v1/usage"]["get"]["security"] == [{"apiKey": []}]


PREFLIGHT = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}


async def _options(url: str, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.options(url, headers=headers) as r:
        return r.status, r.headers


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        (("https://map.example",), "https://map.example", "https://map.example"),
        (("https://map.example",), "https://evil.example", None),
        (("*",), "https://anyone.example", "*"),
        ((), "https://map.example", None),
    ],
)
async def test_cors(store: Store, origins: tuple[str, ...], origin: str, allowed: str | None) -> None:
    key, _ = await KeyStore(store.pool).create("browser", ("read",))
    async with serving(store, cors_origins=origins) as url:
        status, headers = await _options(f"{url}/v1/readings", Origin=origin, **PREFLIGHT)
        if allowed is None:
            assert status == 405 and "Access-Control-Allow-Origin" not in headers
        else:
            assert status == 204
            assert headers["Access-Control-Allow-Origin"] == allowed
            assert "Authorization" in headers["Access-Control-Allow-Headers"]
            assert "GET" in headers["Access-Control-Allow-Methods"]
        # Answers carry the header too, refusals included (a browser then sees the 401's body).
        check: list[tuple[str, str | None, int]] = [("/v1/usage", key, 200), ("/v1/usage", None, 401)]
        check.append(("/v1/stats", None, 200))
        for path, k, want in check:
            status, _, headers = await _get(url + path, k, Origin=origin)
            assert status == want
            assert headers.get("Access-Control-Allow-Origin") == allowed
        status, _, headers = await _get(f"{url}/v1/stats")  # no Origin: not a CORS request
        assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("res", [5, 6, 7, 8, 9, 10, 15])
async def test_metering_sql_equals_its_python_twin(store: Store, res: int) -> None:
    """`cell7_sql` and `epoch_sql` on a real PostgreSQL give what `meter_cell` and `epoch_of` give."""
    genesis, length = 1_767_225_600_000, 86_400_000
    cells = [
        h3.str_to_int(h3.latlng_to_cell(lat, lon, res))
        for lat, lon in ((52.52, 13.4), (-33.9, 151.2), (0.0, -179.99))
    ]
    stamps = [
        0,
        genesis - 1,
        genesis,
        genesis + length - 1,
        genesis + length,
        genesis + 1234 * length + 17,
        253_402_300_799_999,
    ]
    rows = await store.pool.fetch(
        f"""SELECT c, ts, {metering.cell7_sql("c")} AS cell7,
                   {metering.epoch_sql("ts", genesis, length)} AS epoch
            FROM unnest($1::bigint[]) AS c, unnest($2::timestamptz[]) AS ts""",
        cells,
        [ms_to_dt(ms) for ms in stamps],
    )
    assert len(rows) == len(cells) * len(stamps)
    for r in rows:
        assert r["cell7"] == metering.meter_cell(r["c"]), (hex(r["c"]), res)
        assert r["epoch"] == metering.epoch_of(dt_to_ms(r["ts"]), genesis, length), r["ts"]
