"""HTTP API against a real store: readings by device and by cell, pagination, clear 400s."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import h3
import pytest

from devices.keys import new_identity
from devices.sdk import build_message
from ingest.adapters.store import Store
from ingest.core.verify import up_topic
from ingest.model import DeviceRecord, Reading
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, sort_batch
from ingest.service import serve_api

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


async def test_readings_by_device_paginate_exactly_once(api: tuple[str, list[bytes]]) -> None:
    url, ids = api
    seen: list[int] = []
    params: dict[str, str] = {
        "device": ids[0].hex(),
        "from": str(NOW - 120_000),
        "to": str(NOW),
        "limit": "7",
    }
    async with aiohttp.ClientSession() as http:
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


async def test_readings_by_cell(api: tuple[str, list[bytes]]) -> None:
    url, ids = api
    cell = h3.latlng_to_cell(48.85, 13.4, 7)
    async with (
        aiohttp.ClientSession() as http,
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
    ],
)
async def test_bad_parameters_are_400_with_a_message(api: tuple[str, list[bytes]], query: str) -> None:
    url, _ = api
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/readings?{query}") as r:
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


async def test_recent_readings_without_a_range_and_flags_by_name(store: Store) -> None:
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
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/readings?device={ident.device_id.hex()}") as r,
    ):
        assert r.status == 200, await r.text()
        body = await r.json()
    assert [(x["seq"], x["flags"]) for x in body["readings"]] == [(2, ["bad_values"])]
