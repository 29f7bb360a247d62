"""HTTP API against a real store: readings by device and by cell, pagination, clear 400s."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.web
import h3
import pytest

from devices.keys import new_identity
from devices.protocol.model import DeviceRecord, Reading, Reason
from devices.protocol.topics import up_topic
from devices.sdk import build_message
from ingest.adapters.store import ReadStore
from ingest.adapters.store.rows import Totals
from ingest.model import RejectedMessage
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, sort_batch
from ingest.service import serve_api
from tests.fixtures_keys import bearer
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration
NOW = 1_795_000_000_000


async def _ready() -> dict[str, Any]:
    return {"ready": True}


@pytest.fixture
async def api(store: Store) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Two weather stations with 30 single-reading packets each, stored through the real pipeline."""
    from ingest.api.app import create_app

    ids, registry, msgs = [], {}, []
    for lat in (52.52, 48.85):
        ident = new_identity()
        registry[ident.device_id] = DeviceRecord(ident.device_id, ident.pubkey, "0x" + "12" * 20, 2, 0, True)
        ids.append(ident.device_id)
        for seq in range(1, 31):
            reading = Reading(NOW - 60_000 + seq * 1000, lat, 13.4, {"temperature_c": 10.0 + seq / 10})
            msgs.append(
                Incoming(up_topic(ident.device_id), build_message(ident, seq, "weather", [reading]), NOW)
            )
    out = sort_batch(msgs, registry.get, NOW, PipelineConfig(), PipelineState())
    assert not out.rejected
    await store.write_batch(out.accepted, [])
    async with serve_api(create_app(store, _ready, max_rows=100), "127.0.0.1", 0) as url:
        yield url, ids


async def test_readings_by_device_paginate_exactly_once(api: tuple[str, list[bytes]], api_key: str) -> None:
    url, ids = api
    seen: list[int] = []
    params: dict[str, str] = {
        "device": ids[0].hex(),
        "from": str(NOW - 120_000),
        "to": str(NOW),
        "limit": "7",
    }
    async with aiohttp.ClientSession(headers=bearer(api_key)) as http:
        while True:
            async with http.get(f"{url}/v1/readings", params=params) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            seen += [x["seq"] for x in body["readings"]]
            assert all(x["device_id"] == ids[0].hex() for x in body["readings"])
            if body["next"] is None:
                break
            params["cursor"] = body["next"]
    assert seen == list(range(1, 31))


async def test_readings_by_cell(api: tuple[str, list[bytes]], api_key: str) -> None:
    url, ids = api
    cell = h3.latlng_to_cell(48.85, 13.4, 7)
    async with (
        aiohttp.ClientSession(headers=bearer(api_key)) as http,
        http.get(
            f"{url}/v1/readings", params={"cell": cell, "from": str(NOW - 120_000), "to": str(NOW)}
        ) as r,
    ):
        body = await r.json()
    assert {x["device_id"] for x in body["readings"]} == {ids[1].hex()}
    assert len(body["readings"]) == 30


@pytest.mark.parametrize(
    "query",
    [
        "",  # neither device nor cell
        "device=zz&from=0&to=10",
        "device=" + "ab" * 32 + "&from=10&to=5",
        "device=" + "ab" * 32 + "&from=0&to=999999999999",  # range over the limit
        "device=" + "ab" * 32 + "&from=0&to=10&limit=100000",
        "cell=nothex&from=0&to=10",
        "device=" + "ab" * 32 + "&from=0&to=10&cursor=%00%00",
        "device=%00" + "ab" * 31 + "&from=0&to=10",
        "device=" + "ab" * 32 + "&from=1e400",
        "device=" + "ab" * 32 + "&to=" + str(10**20),
        "device=" + "ab" * 32 + "&from=-5",
        "device=" + "ab" * 32 + "&limit=" + str(2**63),
        "device=" + "ab" * 32 + "&from=%D9%A1%D9%A2",  # Arabic-Indic digits: int() would take them
        "cell=8" + "f" * 14,  # hex, but not an H3 cell
    ],
)
async def test_bad_parameters_are_400_with_a_message(
    api: tuple[str, list[bytes]], query: str, api_key: str
) -> None:
    url, _ = api
    async with (
        aiohttp.ClientSession(headers=bearer(api_key)) as http,
        http.get(f"{url}/v1/readings?{query}") as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]


async def test_unknown_epoch_and_owner_are_404(api: tuple[str, list[bytes]]) -> None:
    url, _ = api
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/epochs/5") as r:
            assert r.status == 404
        async with http.get(f"{url}/v1/owners/0x{'12' * 20}/proof") as r:
            assert r.status == 404
        async with http.get(f"{url}/v1/owners/notanaddress/proof") as r:
            assert r.status == 400
        async with http.get(f"{url}/openapi.json") as r:
            assert (await r.json())["openapi"].startswith("3.")


async def test_recent_readings_without_a_range_and_flags_by_name(store: Store, api_key: str) -> None:
    """`?device=ID` alone covers the last day; a flagged reading names its flags."""
    from ingest.api.app import create_app

    now = time.time_ns() // 1_000_000
    ident = new_identity()
    cell = h3.str_to_int(h3.latlng_to_cell(52.52, 13.4, 7))  # where the station asserted it stands
    registry = {ident.device_id: DeviceRecord(ident.device_id, ident.pubkey, "0x" + "12" * 20, 2, cell, True)}
    old = Reading(now - 2 * 86_400_000 + 60_000, 52.52, 13.4, {"temperature_c": 10.0})  # 2 days ago
    hot = Reading(now - 60_000, 52.52, 13.4, {"temperature_c": 80.0})  # over 60 °C: bad_values
    msgs = [
        Incoming(up_topic(ident.device_id), build_message(ident, seq, "weather", [r]), now)
        for seq, r in ((1, old), (2, hot))
    ]
    out = sort_batch(msgs, registry.get, now, PipelineConfig(), PipelineState())
    assert not out.rejected
    await store.write_batch(out.accepted, [])
    async with (
        serve_api(create_app(store, _ready), "127.0.0.1", 0) as url,
        aiohttp.ClientSession(headers=bearer(api_key)) as http,
        http.get(f"{url}/v1/readings?device={ident.device_id.hex()}") as r,
    ):
        assert r.status == 200, await r.text()
        body = await r.json()
    assert [(x["seq"], x["flags"]) for x in body["readings"]] == [(2, ["bad_values"])]


def _forge(payload: list[Any]) -> str:
    """A cursor in the API's format with these fields and a MAC made with the wrong key."""
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return body + "." + "00" * 16


@pytest.mark.parametrize(
    "fields",
    [
        [1e400, "ab" * 32, 1, 0, 0, 10],  # the hand-found 500s: each field out of its column's range
        [10**20, "ab" * 32, 1, 0, 0, 10],
        [-5, "ab" * 32, 1, 0, 0, 10],
        [0, "ab" * 32, 2**63, 0, 0, 10],
        [0, "ab" * 32, 10**100, 0, 0, 10],
        [0, "ab" * 32, 1, 70000, 0, 10],
    ],
)
async def test_forged_cursors_are_400(api: tuple[str, list[bytes]], fields: list[Any], api_key: str) -> None:
    url, ids = api
    query = {"device": ids[0].hex(), "cursor": _forge(fields)}
    async with (
        aiohttp.ClientSession(headers=bearer(api_key)) as http,
        http.get(f"{url}/v1/readings", params=query) as r,
    ):
        assert r.status == 400, await r.text()
        assert "cursor" in (await r.json())["error"]


def test_cursor_fields_are_range_checked_even_when_signed() -> None:
    """A cursor signed with the right key (a leaked key) is still range-checked field by field."""
    from ingest.api.readings import decode_cursor, encode_cursor

    key, dev = b"k" * 32, b"\xab" * 32
    good = encode_cursor(key, dev, None, (0, 10), (5, dev, 1, 0))
    assert decode_cursor(key, good, dev, None) == ((0, 10), (5, dev, 1, 0))
    for bad_pos in [(10**20, dev, 1, 0), (-5, dev, 1, 0), (5, dev, 2**63, 0), (5, dev, 1, 70000)]:
        with pytest.raises(aiohttp.web.HTTPBadRequest):
            decode_cursor(key, encode_cursor(key, dev, None, (0, 10), bad_pos), dev, None)
    with pytest.raises(aiohttp.web.HTTPBadRequest):  # 40 days
        decode_cursor(key, encode_cursor(key, dev, None, (0, 40 * 86_400_000), (5, dev, 1, 0)), dev, None)


async def test_a_cursor_is_bound_to_its_query(api: tuple[str, list[bytes]], api_key: str) -> None:
    """Device A's cursor on device B's query, a tampered cursor, or another range: 400."""
    url, ids = api
    base = {"from": str(NOW - 120_000), "to": str(NOW), "limit": "5"}
    async with aiohttp.ClientSession(headers=bearer(api_key)) as http:
        async with http.get(f"{url}/v1/readings", params={**base, "device": ids[0].hex()}) as r:
            cursor = (await r.json())["next"]
        assert cursor
        nxt = {"device": ids[0].hex(), "cursor": cursor, "limit": "5"}
        async with http.get(f"{url}/v1/readings", params=nxt) as r:
            assert r.status == 200  # the range travels in the cursor
            assert [x["seq"] for x in (await r.json())["readings"]] == [6, 7, 8, 9, 10]
        for params in (
            {"device": ids[1].hex(), "cursor": cursor},
            {"device": ids[0].hex(), "cursor": cursor[:-2] + ("00" if cursor[-2:] != "00" else "11")},
            {"device": ids[0].hex(), "cursor": cursor, "from": str(NOW - 100_000)},
        ):
            async with http.get(f"{url}/v1/readings", params=params) as r:
                assert r.status == 400, params
                assert (await r.json())["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/epochs/1217877904051814006784",
        "/v1/epochs/9223372036854775808",
        "/v1/epochs/0",
        "/v1/epochs/-1",
        "/v1/epochs/1e3",
        "/v1/owners/0x4d41E538832E12538616605D02f8a448CB18A25e/proof",  # mixed case, bad EIP-55
        "/v1/owners/0x4D41e538832E12538616605D02f8a448CB18A25e/proof?epoch=9223372036854775808",
        "/v1/devices/" + "ab" * 31 + "/rejections",
        "/v1/devices/" + "ab" * 32 + "/rejections?limit=0",
    ],
)
async def test_out_of_range_paths_are_400(api: tuple[str, list[bytes]], path: str) -> None:
    url, _ = api
    async with aiohttp.ClientSession() as http, http.get(url + path) as r:
        assert r.status == 400, await r.text()
        assert r.content_type == "application/json"
        assert (await r.json())["error"]


async def test_checksummed_and_one_case_addresses_are_accepted(api: tuple[str, list[bytes]]) -> None:
    url, _ = api
    async with aiohttp.ClientSession() as http:
        for address in (
            "0x4D41e538832E12538616605D02f8a448CB18A25e",
            "0x4d41e538832e12538616605d02f8a448cb18a25e",
            "0x4D41E538832E12538616605D02F8A448CB18A25E",
        ):
            async with http.get(f"{url}/v1/owners/{address}/proof") as r:
                assert r.status == 404, await r.text()  # well formed; no epoch yet


async def test_unknown_paths_and_methods_answer_json(api: tuple[str, list[bytes]]) -> None:
    url, _ = api
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v2/nothing") as r:
            assert r.status == 404
            assert "no such endpoint" in (await r.json())["error"]
        async with http.post(f"{url}/v1/stats", data=b"x") as r:
            assert r.status == 405
            assert r.headers["Allow"]
            assert (await r.json())["error"]
        async with http.delete(f"{url}/v1/epochs/1") as r:
            assert r.status == 405
            assert r.content_type == "application/json"


async def test_stats_reads_the_counters_and_they_match_the_tables(api: tuple[str, list[bytes]]) -> None:
    """The counters move with every batch (stored packets, readings, rejections by reason; a re-run adds
    nothing) and /v1/stats serves them."""
    url, _ = api
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/stats") as r:
        body = await r.json()
    assert (body["packets"], body["readings"], body["rejections"]) == (60, 60, {})
    assert body["source"].startswith("counters")


async def test_counters_follow_duplicates_replays_and_rejections(store: Store) -> None:
    ident = new_identity()
    registry = {ident.device_id: DeviceRecord(ident.device_id, ident.pubkey, "0x" + "12" * 20, 2, 0, True)}
    msgs = [
        Incoming(
            up_topic(ident.device_id),
            build_message(
                ident, seq, "weather", [Reading(NOW - 9000 + seq, 52.5, 13.4, {"temperature_c": 1})]
            ),
            NOW,
        )
        for seq in range(1, 4)
    ]
    forged = Incoming(up_topic(ident.device_id), msgs[0].payload[:-1] + bytes([msgs[0].payload[-1] ^ 1]), NOW)
    replay = Incoming(
        up_topic(ident.device_id),
        build_message(ident, 1, "weather", [Reading(NOW - 5000, 52.5, 13.4, {"temperature_c": 2})]),
        NOW,
    )
    for batch in ([*msgs, forged], [*msgs, forged], [replay]):  # the second is a redelivery
        out = sort_batch(batch, registry.get, NOW, PipelineConfig(), PipelineState())
        await store.write_batch(out.accepted, out.rejected)
        assert await store.stats() == await store.counts()
    assert (await store.stats()).rejections == {"bad_signature": 1, "replay": 1}
    assert (await store.stats()).packets == 3


async def test_a_slow_query_is_504_and_a_full_api_is_503(store: Store, pg_dsn: str) -> None:
    """A statement past the API pool's timeout answers 504 JSON; requests beyond the API's slots wait
    `busy_timeout_s`, then 503 JSON with Retry-After. Never a 500."""
    from ingest.adapters.db import create_pool
    from ingest.api.app import ApiLimits, create_app

    class SlowStore(ReadStore):
        async def stats(self) -> Totals:
            await self.pool.fetchval("SELECT pg_sleep(2)")
            return Totals(0, 0, {})

    pool = await create_pool(pg_dsn, max_size=1, statement_timeout_ms=200)
    try:
        limits = ApiLimits(slots=1, busy_timeout_s=0.05, statement_timeout_ms=200)
        async with (
            serve_api(create_app(SlowStore(pool), _ready, limits=limits), "127.0.0.1", 0) as url,
            aiohttp.ClientSession() as http,
        ):
            statuses = []

            async def one() -> None:
                async with http.get(f"{url}/v1/stats") as r:
                    statuses.append((r.status, (await r.json())["error"], r.headers.get("Retry-After")))

            await asyncio.gather(*(one() for _ in range(3)))
            async with http.get(f"{url}/healthz") as r:  # outside /v1: no slot needed
                assert r.status == 200
    finally:
        await pool.close()
    codes = sorted(s for s, _, _ in statuses)
    assert codes[0] == 503 and codes[-1] == 504, statuses
    assert any("statement timeout" in m for s, m, _ in statuses if s == 504)
    assert all(h == "1" for s, _, h in statuses if s == 503)


async def test_a_page_ends_at_the_byte_cap(store: Store) -> None:
    """Large readings: the page stops at about max_bytes (at least one row) and `next` goes on."""
    ident = new_identity()
    registry = {ident.device_id: DeviceRecord(ident.device_id, ident.pubkey, "0x" + "12" * 20, 2, 0, True)}
    msgs = [
        Incoming(
            up_topic(ident.device_id),
            build_message(ident, seq, "weather", [Reading(NOW - 9000 + seq, 52.5, 13.4, {"t": 1.0})]),
            NOW,
        )
        for seq in range(1, 11)
    ]
    out = sort_batch(msgs, registry.get, NOW, PipelineConfig(), PipelineState())
    big = {f"v{i:04d}": float(i) for i in range(1500)}  # ~20 kB of vals (the wire allows 64 KiB)
    await store.write_batch(
        [
            dataclasses.replace(p, readings=tuple(r._replace(vals=big) for r in p.readings))
            for p in out.accepted
        ],
        [],
    )
    seen, after = [], None
    while True:
        page = await store.readings(
            device_id=ident.device_id, start_ms=0, end_ms=NOW, limit=100, after=after, max_bytes=50_000
        )
        assert 1 <= len(page.items) <= 3
        seen += [x.seq for x in page.items]
        if page.next is None:
            break
        after = page.next
    assert seen == list(range(1, 11))
    tiny = await store.readings(device_id=ident.device_id, start_ms=0, end_ms=NOW, max_bytes=1)
    assert len(tiny.items) == 1 and tiny.next is not None


async def test_rejection_pages_are_bounded(api: tuple[str, list[bytes]], store: Store) -> None:
    """A 60 KB topic (MQTT allows 64 KiB) comes back cut to 300 characters, the detail to 1,000."""
    url, ids = api
    rejected = [
        RejectedMessage(bytes([i]) * 32, ids[0], i, Reason.MALFORMED, "d" * 5000, NOW, "t" * 60_000)
        for i in range(3)
    ]
    await store.write_batch([], rejected)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/devices/{ids[0].hex()}/rejections") as r:
        rows = (await r.json())["rejections"]
    assert [(len(x["topic"]), len(x["detail"])) for x in rows] == [(300, 1000)] * 3
    assert (await store.stats()).rejections == {"malformed": 3}


async def test_epoch_summary_leaves_the_lists_in_postgres_and_manifest_streams_them(store: Store) -> None:
    """GET /v1/epochs/{n} stays small however big the manifest (read from the summary columns filled by
    save_epoch_result, the manifest never selected); GET /v1/epochs/{n}/manifest is the header with
    links (small too), its lists come in keyset pages whose concatenation is the list, and
    …/manifest/export streams the whole document, strings with backslashes, quotes and newlines
    included."""
    from ingest.adapters.store.rows import CellReward, DeviceReward, OwnerReward
    from ingest.api.app import create_app

    n_devices, owners = 20_000, ["0x" + "12" * 20, "0x" + "AB" * 20, "0x" + "ab" * 19 + "Ac"]
    cells = [0x871F1D489FFFFFF, 0x872830828FFFFFF, 0x7FFFFFFFFFFFFFFF]
    devices = [
        DeviceReward(i.to_bytes(32, "big"), owners[i % 3], cells[i % 3], 1, 1, 0, 10_000, 1, 2, 100 + i)
        for i in range(n_devices)
    ]
    header = {
        "version": 2,
        "epoch": 3,
        "params": {"emission": "20000", "note": 'a\\b "c"\n\t\u00e9'},  # COPY must not escape these
        "cells": 3,
        "root": "0x" + "01" * 32,
    }
    cell_rows = [CellReward(c, 10_000, 10_000, 10_000, 10_000, 10_000, 7, 10_000, 7, None) for c in cells]
    cell_rows[1] = cell_rows[1]._replace(last_paid=2)
    owner_rows = [OwnerReward(o, 5, 5 + i, []) for i, o in enumerate(owners)]
    await store.save_epoch_result(
        3, 1_000, 2_000, n_devices, n_devices, 0, b"\x01" * 32, b"\x02" * 32,
        {**header, "devices": ["dropped: the rows are the list"]}, devices, owner_rows, cell_rows,
    )  # fmt: skip
    # the document's order: cells ascending, devices by (cell, id), owners as Python sorts strings
    expected = {
        **header,
        "cell_factors": [
            {"cell": hex(c), "base": 10_000, "boost": 10_000, "freshness": 10_000, "demand": 10_000,
             "weight": 10_000, "share": "7", "depth": 10_000, "paid": "7"}
            for c in cells
        ],
        "last_paid": [[hex(cells[1]), 2]],
        "devices": [
            {"device_id": d.device_id.hex(), "owner": d.owner, "hw_class": 2, "registered_block": d[9],
             "cell": hex(d.cell), "readings": 1, "flagged": 0, "quality": 10_000, "rank": 1, "amount": "1"}
            for d in sorted(devices, key=lambda d: (d.cell, d.device_id))
        ],
        "owners": [
            {"owner": o.owner, "amount": "5", "cumulative": str(o.cumulative)}
            for o in sorted(owner_rows, key=lambda o: o.owner)
        ],
    }  # fmt: skip
    assert await store.manifest(3) == expected
    async with serve_api(create_app(store, _ready), "127.0.0.1", 0) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/epochs/3") as r:
            assert r.status == 200
            raw = await r.read()
        summary = json.loads(raw)
        assert len(raw) < 2_000  # the manifest is ~5 MB
        assert "manifest" not in summary and "raw_tx" not in summary
        assert (summary["cells"], summary["devices"], summary["owners"]) == (3, n_devices, 3)
        assert summary["params"] == header["params"] and summary["allocated"] == str(n_devices)

        async with http.get(f"{url}/v1/epochs/3/manifest") as r:
            assert r.status == 200 and r.content_type == "application/json"
            raw = await r.read()
        assert len(raw) < 2_000 and json.loads(raw) == {
            **header,
            "links": {
                "cells": "/v1/epochs/3/manifest/cells",
                "devices": "/v1/epochs/3/manifest/devices",
                "owners": "/v1/epochs/3/manifest/owners",
                "export": "/v1/epochs/3/manifest/export",
            },
        }
        async with http.get(f"{url}/v1/epochs/3/manifest/export") as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert await r.json() == expected
        for name, part, limit in (
            ("devices", "devices", 7_000),
            ("owners", "owners", 2),
            ("cells", "cell_factors", 1),
        ):
            got: list[Any] = []
            after: str | None = None
            while True:
                query = {"limit": str(limit)} | ({"after": after} if after else {})
                async with http.get(f"{url}/v1/epochs/3/manifest/{name}", params=query) as r:
                    assert r.status == 200, await r.text()
                    page = await r.json()
                got += page[part]
                after = page["next"]
                if after is None:
                    break
            if part == "cell_factors":
                assert [c.pop("last_paid") for c in got] == [None, 2, None]
            assert got == expected[part], name
        for path in ("/v1/epochs/4", "/v1/epochs/4/manifest", "/v1/epochs/4/manifest/export",
                     "/v1/epochs/4/manifest/devices"):  # fmt: skip
            async with http.get(f"{url}{path}") as r:
                assert r.status == 404 and "not closed" in (await r.json())["error"]
        bad = ("/0/manifest", "/3/manifest/devices?after=12", "/3/manifest/cells?after=8000000000000000",
               "/3/manifest/owners?after=x", "/3/manifest/owners?limit=10001")  # fmt: skip
        for path in (f"/v1/epochs{b}" for b in bad):
            async with http.get(f"{url}{path}") as r:
                assert r.status == 400, path


# The summary's SQL before migration 012: cut the lists out of the manifest, count the reward rows.
OLD_SUMMARY_SQL = """SELECT epoch, start_at, end_at, status, emission, allocated, unissued, root,
       inputs_digest, manifest - 'devices' - 'owners' AS manifest, tx_hash, raw_tx, tx_nonce,
       block_number, closed_at, published_at,
       (SELECT count(*) FROM device_rewards d WHERE d.epoch = e.epoch) AS devices,
       (SELECT count(*) FROM owner_rewards o WHERE o.epoch = e.epoch) AS owners
FROM epochs e WHERE epoch = $1"""


async def test_epoch_summary_sql_never_touches_the_manifest(store: Store) -> None:
    """The summary selects small columns only: neither its statement nor its plan's output lists (EXPLAIN
    VERBOSE) name `manifest`, and it answers what the manifest holds. With -s it prints the old and the
    new statement's median time on a big manifest (DEPIN_SUMMARY_DEVICES rows, default 20k ≈ 3 MB)."""
    import os
    import statistics

    from ingest.adapters.store.reads import EPOCH_SUMMARY_SQL
    from ingest.adapters.store.rows import DeviceReward, OwnerReward

    assert "manifest" not in EPOCH_SUMMARY_SQL
    plan = "\n".join(r[0] for r in await store.pool.fetch("EXPLAIN VERBOSE " + EPOCH_SUMMARY_SQL, 3))
    assert "manifest" not in plan and "rewards" not in plan, plan
    assert "manifest" in "\n".join(
        r[0] for r in await store.pool.fetch("EXPLAIN VERBOSE " + OLD_SUMMARY_SQL, 3)
    )

    n = int(os.environ.get("DEPIN_SUMMARY_DEVICES", "20000"))
    owners = [f"0x{i:040x}" for i in range(1, 101)]
    devices = [
        DeviceReward(i.to_bytes(32, "big"), owners[i % 100], 0x871F1D489FFFFFF, 1, 1) for i in range(n)
    ]
    manifest = {
        "epoch": 3,
        "params": {"emission": str(n), "max_devices_per_cell": "16"},
        "cells": 1,
        "devices": [
            {
                "device_id": d.device_id.hex(),
                "owner": d.owner,
                "cell": hex(d.cell),
                "readings": 1,
                "amount": "1",
            }
            for d in devices
        ],
        "owners": [{"owner": o, "amount": "1", "cumulative": "1"} for o in owners],
    }
    await store.save_epoch_result(
        3, 1_000, 2_000, n, n, 0, b"\x01" * 32, b"\x02" * 32, manifest, devices,
        [OwnerReward(o, 1, 1, []) for o in owners],
    )  # fmt: skip
    summary = await ReadStore(store.pool).epoch_summary(3)
    assert summary is not None and summary.row.manifest == {}
    assert (summary.params, summary.cells, summary.devices, summary.owners) == (manifest["params"], 1, n, 100)
    old = await store.pool.fetchrow(OLD_SUMMARY_SQL, 3)
    assert old is not None and (old["manifest"]["params"], old["devices"], old["owners"]) == (
        summary.params, summary.devices, summary.owners
    )  # fmt: skip

    size = await store.pool.fetchval("SELECT octet_length(manifest::text) FROM epochs WHERE epoch = 3")
    timings = {}
    for name, sql in (
        ("before (manifest - lists, counts)", OLD_SUMMARY_SQL),
        ("after (columns)", EPOCH_SUMMARY_SQL),
    ):
        runs = []
        for _ in range(30):
            t0 = time.perf_counter()
            await store.pool.fetchrow(sql, 3)
            runs.append((time.perf_counter() - t0) * 1000)
        timings[name] = statistics.median(runs)
    print(f"\nepoch summary, manifest {size / 1e6:.1f} MB ({n} devices): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))  # fmt: skip
