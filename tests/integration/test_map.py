"""The coverage map: GET /v1/coverage and GET /v1/epochs on a seeded database, and the page at / in a
real headless Chromium (Debian's `chromium`, driven by Playwright) against `depin run --parts api`
started as a process with its settings from the environment.

The seeded database: epochs of one hour, numbered so that epoch 6 is open (it began 30 minutes ago)
and epoch 5 is closed by the real epoch close (`Epochs.close`, no chain). Epoch 5: devices A and B in
cell P1 (5 + 3 readings), C in P2 (4), D in P3 (2); epoch 6 so far: A in P1 (3), E in P4 (2).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import h3
import pytest
from aiohttp import web

from devices.keys import DeviceIdentity, new_identity
from devices.protocol.model import DeviceRecord, Reading
from devices.protocol.topics import up_topic
from devices.sdk import build_message
from ingest.adapters.store.coverage import CoverageStore
from ingest.api.app import create_app
from ingest.api.auth import ApiAccess
from ingest.api.metering import EpochGrid
from ingest.core.coverage import cell_ring
from ingest.epochs import EpochConfig, Epochs
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, sort_batch
from ingest.service import serve_api
from tests.fixtures_pg import Store
from tests.procs import ConsumerProcess, wait_for

pytestmark = pytest.mark.integration

HOUR = 3_600_000
CHROMIUM = "/usr/bin/chromium"
# (lat, lon) of the four cells (weather stations: H3 resolution 7)
PLACES = {"P1": (52.52, 13.40), "P2": (52.60, 13.20), "P3": (52.45, 13.62), "P4": (52.40, 13.05)}
# epoch → device → (place, readings)
PLAN = {
    5: {"A": ("P1", 5), "B": ("P1", 3), "C": ("P2", 4), "D": ("P3", 2)},
    6: {"A": ("P1", 3), "E": ("P4", 2)},
}


def cell_of(place: str) -> str:
    return h3.latlng_to_cell(*PLACES[place], 7)


@dataclass
class Seeded:
    genesis_ms: int
    length_ms: int
    devices: dict[str, DeviceIdentity]
    closed: Any  # the EpochRow of epoch 5

    def hex(self, name: str) -> str:
        return self.devices[name].device_id.hex()


async def seed(store: Store) -> Seeded:
    now = time.time_ns() // 1_000_000
    genesis = now - 5 * HOUR - HOUR // 2  # epoch 6 began 30 min ago
    names = sorted({d for plan in PLAN.values() for d in plan})
    devices = {n: new_identity() for n in names}
    place_of = {d: place for plan in PLAN.values() for d, (place, _) in plan.items()}
    records = {
        ident.device_id: DeviceRecord(
            ident.device_id,
            ident.pubkey,
            "0x" + f"{i + 1:040x}",  # one owner each: every device in a cell earns
            2,  # weather
            h3.str_to_int(cell_of(place_of[n])),
            True,
        )
        for i, (n, ident) in enumerate(devices.items())
    }
    await store.upsert_devices(list(records.values()), 1)
    msgs = []
    for seq, (epoch, plan) in enumerate(PLAN.items(), start=1):
        base = now - HOUR if epoch == 5 else now - 20 * 60_000
        for name, (place, n) in plan.items():
            lat, lon = PLACES[place]
            readings = [
                Reading(base + i * 60_000, lat, lon, {"temperature_c": 9.5 + i, "humidity_pct": 60 + i})
                for i in range(n)
            ]
            msgs.append(
                Incoming(
                    up_topic(devices[name].device_id),
                    build_message(devices[name], seq, "weather", readings),
                    now,
                )
            )
    out = sort_batch(msgs, records.get, now, PipelineConfig(), PipelineState())
    assert not out.rejected and len(out.accepted) == len(msgs)
    await store.write_batch(out.accepted, out.rejected)
    epochs = Epochs(store, None, EpochConfig(genesis_ms=genesis, length_ms=HOUR, emission=10**22))
    closed = await epochs.close(5)
    return Seeded(genesis, HOUR, devices, closed)


@pytest.fixture
async def seeded(store: Store) -> Seeded:
    return await seed(store)


@pytest.fixture
async def api(store: Store, seeded: Seeded) -> AsyncIterator[str]:
    async def ready() -> dict[str, Any]:
        return {"ready": True, "failing": []}

    # `depin run`: the epoch numbering from its settings
    app = create_app(store, ready, access=ApiAccess(grid=EpochGrid(seeded.genesis_ms, seeded.length_ms)))
    async with serve_api(app, "127.0.0.1", 0) as url:
        yield url


async def get(url: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        body = await r.json(content_type=None) if "json" in r.content_type else await r.text()
        return r.status, r.content_type, body


def props(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["properties"]["cell"]: f["properties"] for f in body["features"]}


# --- the endpoints ------------------------------------------------------------------------------------


async def test_coverage_of_a_closed_epoch_comes_from_its_rewards(api: str, seeded: Seeded) -> None:
    status, ctype, body = await get(f"{api}/v1/coverage?epoch=5")
    assert status == 200 and ctype == "application/geo+json", body
    start = seeded.genesis_ms + 4 * HOUR
    assert {k: body[k] for k in ("type", "epoch", "start_ms", "end_ms", "status", "as_of_ms")} == {
        "type": "FeatureCollection",
        "epoch": 5,
        "start_ms": start,
        "end_ms": start + HOUR,
        "status": "closed",
        "as_of_ms": start + HOUR,  # a closed epoch's freshness is measured from its end
    }
    assert body["cells"] == 3 and body["truncated"] is False
    cells = props(body)
    p1, p2, p3 = cell_of("P1"), cell_of("P2"), cell_of("P3")
    assert list(cells) == [p1, p2, p3]  # the most-read first
    assert [(c["devices"], c["readings"]) for c in cells.values()] == [(2, 8), (1, 4), (1, 2)]
    assert cells[p1]["device_ids"] == [seeded.hex("A"), seeded.hex("B")]  # the most-read first
    assert sum(int(c["reward"]) for c in cells.values()) == seeded.closed.allocated > 0
    for f in body["features"]:
        p = f["properties"]
        assert f["id"] == p["cell"]
        assert f["geometry"] == {"type": "Polygon", "coordinates": [cell_ring(h3.str_to_int(p["cell"]))]}
        assert p["freshness_ms"] == body["end_ms"] - p["newest_ms"] > 0
    # The A readings are a minute apart from an hour ago: A's last is 4 minutes after its first.
    assert cells[p1]["newest_ms"] - cells[p3]["newest_ms"] == 3 * 60_000


async def test_coverage_of_the_open_epoch_so_far(api: str, seeded: Seeded) -> None:
    status, _, body = await get(f"{api}/v1/coverage")
    assert status == 200, body
    assert body["epoch"] == 6 and body["status"] == "open" and body["cells"] == 2
    assert body["as_of_ms"] <= time.time_ns() // 1_000_000 < body["end_ms"]
    cells = props(body)
    assert list(cells) == [cell_of("P1"), cell_of("P4")]
    assert [(c["devices"], c["readings"], c["reward"]) for c in cells.values()] == [
        (1, 3, None),
        (1, 2, None),
    ]
    assert cells[cell_of("P4")]["device_ids"] == [seeded.hex("E")]
    for c in cells.values():
        assert c["freshness_ms"] == body["as_of_ms"] - c["newest_ms"] and 0 < c["freshness_ms"] < HOUR
    again = (await get(f"{api}/v1/coverage?epoch=6"))[2]
    assert props(again) == cells


async def test_coverage_answers_are_shared_and_kept(
    api: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many maps polling the open epoch cost one query per few seconds; a closed epoch's answer is
    built once (it cannot change)."""
    calls = {"open": 0, "closed": 0}
    real_open, real_closed = CoverageStore.open_coverage, CoverageStore.closed_coverage

    async def counted_open(self: CoverageStore, *args: Any) -> Any:
        calls["open"] += 1
        return await real_open(self, *args)

    async def counted_closed(self: CoverageStore, *args: Any) -> Any:
        calls["closed"] += 1
        return await real_closed(self, *args)

    monkeypatch.setattr(CoverageStore, "open_coverage", counted_open)
    monkeypatch.setattr(CoverageStore, "closed_coverage", counted_closed)
    answers = await asyncio.gather(*(get(f"{api}/v1/coverage?epoch=6") for _ in range(20)))
    assert {a[0] for a in answers} == {200} and len({str(a[2]) for a in answers}) == 1
    assert calls["open"] == 1
    first = (await get(f"{api}/v1/coverage?epoch=5"))[2]
    await store.pool.execute("DELETE FROM device_rewards WHERE epoch = 5")  # kept: not asked again
    assert (await get(f"{api}/v1/coverage?epoch=5"))[2] == first and calls["closed"] == 1


async def test_coverage_is_capped_most_read_first(api: str) -> None:
    _, _, body = await get(f"{api}/v1/coverage?epoch=5&limit=1")
    assert body["cells"] == 3 and body["truncated"] is True
    assert [f["id"] for f in body["features"]] == [cell_of("P1")]


async def test_coverage_bad_input_is_a_json_400_naming_it_and_a_future_epoch_a_404(api: str) -> None:
    for query, name in [
        ("epoch=0", "epoch"),
        ("epoch=abc", "epoch"),
        (f"epoch={2**63}", "epoch"),
        ("epoch=%00", "epoch"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("bbox=1,2,3,4", "bbox"),
    ]:
        status, ctype, body = await get(f"{api}/v1/coverage?{query}")
        assert status == 400 and ctype == "application/json" and name in body["error"], (query, body)
    status, _, body = await get(f"{api}/v1/coverage?epoch=7")
    assert status == 404 and "has not started" in body["error"]
    status, _, body = await get(f"{api}/v1/coverage?epoch=3")  # before the first reading: empty, open
    assert status == 200 and body["status"] == "open" and body["features"] == [] and body["cells"] == 0


async def test_epochs_list_the_open_one_then_the_stored_ones(api: str, seeded: Seeded) -> None:
    status, _, body = await get(f"{api}/v1/epochs")
    assert status == 200, body
    start6 = seeded.genesis_ms + 5 * HOUR
    assert body == {
        "epochs": [
            {"epoch": 6, "start_ms": start6, "end_ms": start6 + HOUR, "status": "open", "covered": True},
            {"epoch": 5, "start_ms": start6 - HOUR, "end_ms": start6, "status": "closed", "covered": True},
        ],
        "open": 6,
    }
    assert [e["epoch"] for e in (await get(f"{api}/v1/epochs?before=6"))[2]["epochs"]] == [5]
    assert [e["epoch"] for e in (await get(f"{api}/v1/epochs?limit=1"))[2]["epochs"]] == [6]
    for query in ("limit=0", "limit=1001", "before=-1", "epoch=5"):
        status, _, body = await get(f"{api}/v1/epochs?{query}")
        assert status == 400 and query.split("=")[0] in body["error"], (query, body)


async def test_the_page_and_its_files(api: str) -> None:
    status, ctype, page = await get(f"{api}/")
    assert status == 200 and ctype == "text/html"
    assert '"tilesUrl": ""' in page and "{{MAP_CONFIG}}" not in page  # a plain background by default
    assert 'src="static/map.js"' in page
    status, ctype, js = await get(f"{api}/static/map.js")
    assert status == 200 and ctype == "application/javascript" and "depinMap" in js
    status, ctype, _ = await get(f"{api}/static/map.css")
    assert status == 200 and ctype == "text/css"
    status, ctype, body = await get(f"{api}/static/secret.txt")
    assert status == 404 and ctype == "application/json" and "no such file" in body["error"]
    doc = (await get(f"{api}/openapi.json"))[2]
    assert {"/", "/static/{name}", "/v1/coverage", "/v1/epochs"} <= set(doc["paths"])


# --- the page in Chromium, against `depin run --parts api` -------------------------------------------


async def until(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll `expression` in the page. Not page.wait_for_function: it evaluates its predicate with eval,
    which the page's Content-Security-Policy (script-src 'self') refuses, as it should."""
    await wait_for(lambda: page.evaluate(expression), timeout, expression, every=0.1)


def chromium_path() -> str:
    assert os.path.exists(CHROMIUM), "Debian's chromium is needed (make test installs it: make chromium)"
    return CHROMIUM


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1×1, 8-bit RGB
    pixel = zlib.compress(b"\x00\xcc\xdd\xee")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel) + chunk(b"IEND", b"")


@pytest.fixture
async def tile_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A tile server on loopback: answers every tile with a 1×1 PNG and records what was asked."""
    png = tiny_png()
    asked: list[str] = []

    async def tile(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{z}/{x}/{y}.png", tile)
    async with serve_api(app, "127.0.0.1", 0) as url:
        yield url, asked


async def test_the_map_in_chromium(
    pg_dsn: str, seeded: Seeded, tile_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    chromium = chromium_path()
    tiles_url, tiles_asked = tile_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env.update(
        {
            "DEPIN_DATABASE_URL": pg_dsn,
            "DEPIN_EPOCH_GENESIS_MS": str(seeded.genesis_ms),
            "DEPIN_EPOCH_LENGTH_S": str(seeded.length_ms // 1000),
            "DEPIN_MAP_TILES_URL": tiles_url + "/{z}/{x}/{y}.png",
            "DEPIN_MAP_TILES_ATTRIBUTION": "test tiles",
            "PYTHONUNBUFFERED": "1",
        }
    )
    proc = ConsumerProcess(env, tmp_path / "api.log", parts="api", wait_for_mqtt=False)
    errors: list[str] = []
    try:
        await proc.start()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{proc.url}/")
                await until(page, "window.depinMap && window.depinMap.ready")
                state = await page.evaluate("window.depinMap")
                assert (state["epoch"], state["status"], state["cells"]) == (6, "open", 2), state
                assert await page.locator("path.depin-cell").count() == 2
                assert await page.locator("path.depin-device").count() == 2  # A and E
                options = await page.locator("#epoch option").evaluate_all("os => os.map(o => o.value)")
                assert options == ["6", "5"]

                # The picker: epoch 5's three cells replace epoch 6's two.
                await page.select_option("#epoch", "5")
                await until(page, "window.depinMap.epoch === 5")
                assert await page.locator("path.depin-cell").count() == 3
                assert await page.locator("path.depin-device").count() == 4
                await page.select_option("#metric", "reward")
                assert "reward" in await page.locator("#legend").inner_text()

                # The device search opens A's view: its cell highlighted, the device view (GET
                # /v1/devices/{id}) or its 404 in the side panel.
                await page.fill("#device", seeded.hex("A"))
                await page.click("#search button")
                await until(page, "window.depinMap.deviceView !== null")
                state = await page.evaluate("window.depinMap")
                assert state["device"] == seeded.hex("A") and state["deviceCells"] == [cell_of("P1")]
                assert state["deviceView"]["status"] in (200, 404), state["deviceView"]
                assert await page.locator("#panel").is_visible()
                panel = await page.locator("#panel").inner_text()
                assert cell_of("P1") in panel and "Device view" in panel
                assert await page.locator("path.depin-highlight").count() == 1
                assert tiles_asked, "the tile layer from DEPIN_MAP_TILES_URL was never asked for a tile"

                shot = tmp_path / "map.png"
                await page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot: {shot}")
            finally:
                await browser.close()
    finally:
        await proc.stop()
    assert not errors, errors
