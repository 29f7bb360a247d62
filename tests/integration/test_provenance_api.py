"""Provenance and owner views on a real PostgreSQL, through the API: the envelope kept byte for byte
(packets.envelope), GET /v1/packets/{device_id}/{seq}, the per-device per-epoch counts written in the
batch's transaction and GET /v1/devices/{id}, GET /v1/owners/{address}/devices. The same through
`depin run` as a process, with `depin verify-export` against anvil: test_provenance_process.py."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import h3
import pytest

from devices.keys import DeviceIdentity, new_identity
from devices.protocol.model import DeviceRecord, Reading
from devices.protocol.topics import up_topic
from devices.sdk import build_message
from ingest.api.app import ApiLimits, create_app
from ingest.api.auth import ApiAccess
from ingest.api.metering import EpochGrid
from ingest.pipeline import Incoming, PipelineConfig, PipelineState, sort_batch
from ingest.service import serve_api
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration
OWNER = "0x4D41e538832E12538616605D02f8a448CB18A25e"
LENGTH_MS = 60_000


async def _ready() -> dict[str, Any]:
    return {"ready": True, "failing": []}


def _messages(ident: DeviceIdentity, seqs: range, t0: int, n: int = 2) -> list[Incoming]:
    return [
        Incoming(
            up_topic(ident.device_id),
            build_message(
                ident,
                seq,
                "weather",
                [
                    Reading(t0 + seq * 5_000 + i * 1_000, 52.52, 13.405, {"temperature_c": 9.5 + i})
                    for i in range(n)
                ],
            ),
            t0 + seq * 5_000 + 2_000,
        )
        for seq in seqs
    ]


@pytest.fixture
async def served(store: Store) -> AsyncIterator[tuple[str, Store, int]]:
    genesis = time.time_ns() // 1_000_000 - 10 * LENGTH_MS
    store._epochs = (genesis, LENGTH_MS)  # the service passes DEPIN_EPOCH_* (ingest/service.py)
    # Keys off: these tests are about the answers (keys and their scopes: test_api_keys.py).
    access = ApiAccess(required=False, grid=EpochGrid(genesis, LENGTH_MS))
    app = create_app(store, _ready, limits=ApiLimits(max_rows=1000, slots=2), access=access)
    async with serve_api(app, "127.0.0.1", 0) as url:
        yield url, store, genesis


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.json()


async def test_packet_view_serves_the_envelope_byte_for_byte(served: tuple[str, Store, int]) -> None:
    url, store, genesis = served
    ident = new_identity()
    registry = {ident.device_id: DeviceRecord(ident.device_id, ident.pubkey, OWNER, 2, 0, True)}
    msgs = _messages(ident, range(1, 4), genesis + LENGTH_MS, n=3)
    now = msgs[-1].received_ms
    out = sort_batch(msgs, registry.get, now, PipelineConfig(rate_limit=None), PipelineState())
    assert len(out.accepted) == 3
    await store.write_batch(out.accepted, out.rejected)

    status, body = await _get(f"{url}/v1/packets/{ident.device_id.hex()}/2")
    assert status == 200, body
    assert base64.b64decode(body["envelope"]) == msgs[1].payload
    assert [r["idx"] for r in body["readings"]] == [0, 1, 2]
    assert [r["vals"]["temperature_c"] for r in body["readings"]] == [9.5, 10.5, 11.5]
    assert {r["seq"] for r in body["readings"]} == {2}
    assert body["kind"] == "weather" and body["seq"] == 2

    assert (await _get(f"{url}/v1/packets/{ident.device_id.hex()}/9"))[0] == 404
    for bad in ("/-1", "/x", "/9223372036854775808", "/1?idx=0"):
        status, body = await _get(f"{url}/v1/packets/{ident.device_id.hex()}{bad}")
        assert status == 400, (bad, body)
        assert "seq" in body["error"] or "idx" in body["error"]

    # A packet stored before envelopes were kept (migration 010) answers envelope null.
    await store.pool.execute("UPDATE packets SET envelope = NULL WHERE seq = 1")
    status, body = await _get(f"{url}/v1/packets/{ident.device_id.hex()}/1")
    assert status == 200 and body["envelope"] is None and len(body["readings"]) == 3


async def test_device_and_owner_views_count_per_epoch(served: tuple[str, Store, int]) -> None:
    url, store, genesis = served
    idents = sorted((new_identity() for _ in range(3)), key=lambda i: i.device_id)
    a = idents[0]
    cell = int(h3.latlng_to_cell(52.52, 13.405, 7), 16)  # where the readings are: not off_location
    records = [DeviceRecord(i.device_id, i.pubkey, OWNER, 2, cell, True, 5) for i in idents]
    await store.upsert_devices(records, block=9)
    registry = {r.device_id: r for r in records}
    # Device a: 3 packets in epoch 2 (12 readings of which the out-of-bounds ones are flagged), 2 in
    # epoch 3, one forged message (bad_signature), and a redelivery of the whole batch (no double count).
    msgs = _messages(a, range(1, 4), genesis + LENGTH_MS) + _messages(a, range(13, 15), genesis + LENGTH_MS)
    hot = build_message(
        a, 20, "weather", [Reading(genesis + LENGTH_MS + 90_000, 52.52, 13.405, {"temperature_c": 99.0})]
    )
    msgs.append(Incoming(up_topic(a.device_id), hot, genesis + LENGTH_MS + 91_000))
    forged = bytearray(msgs[0].payload)
    forged[-1] ^= 1
    msgs.append(Incoming(up_topic(a.device_id), bytes(forged), genesis + 2 * LENGTH_MS + 1_000))
    now = genesis + 3 * LENGTH_MS
    cfg = PipelineConfig(rate_limit=None)
    for _ in range(2):
        out = sort_batch(msgs, registry.get, now, cfg, PipelineState())
        await store.write_batch(out.accepted, out.rejected)

    status, v = await _get(f"{url}/v1/devices/{a.device_id.hex()}")
    assert status == 200, v
    assert (v["status"], v["owner"], v["kind"], v["hw_class"], v["asserted_cell"]) == (
        "active",
        OWNER,
        None,
        2,
        format(cell, "x"),
    )  # kind: the mirror holds no hardware-class rows in this test
    by_epoch = {e["epoch"]: e for e in v["epochs"]}
    assert [e["epoch"] for e in v["epochs"]] == sorted(by_epoch, reverse=True)
    assert (by_epoch[2]["packets"], by_epoch[2]["readings"], by_epoch[2]["flagged"]) == (3, 6, 0)
    assert (by_epoch[3]["packets"], by_epoch[3]["readings"], by_epoch[3]["flagged"]) == (3, 5, 1)
    assert by_epoch[3]["rejected"] == 1 and by_epoch[3]["quality"] == 0.8
    assert v["quality"] == round(10 / 11, 4)
    assert v["last_seen_ms"] == max(m.received_ms for m in msgs[:-1])
    status, v1 = await _get(f"{url}/v1/devices/{a.device_id.hex()}?epochs=1")
    assert [e["epoch"] for e in v1["epochs"]] == [3]

    # Unknown device: 404; one that sent only garbage: its rejections, status unregistered.
    assert (await _get(f"{url}/v1/devices/{'ab' * 32}"))[0] == 404
    for bad in ("?epochs=0", "?epochs=101", "?limit=5"):
        status, body = await _get(f"{url}/v1/devices/{a.device_id.hex()}{bad}")
        assert status == 400 and ("epochs" in body["error"] or "limit" in body["error"]), body

    # The fleet, two pages of two and one.
    status, page = await _get(f"{url}/v1/owners/{OWNER.lower()}/devices?limit=2")
    assert status == 200, page
    assert [d["device_id"] for d in page["devices"]] == [i.device_id.hex() for i in idents[:2]]
    assert page["devices"][0]["epochs"] == v["epochs"] and page["next"] == idents[1].device_id.hex()
    status, page2 = await _get(f"{url}/v1/owners/{OWNER}/devices?limit=2&after={page['next']}")
    assert [d["device_id"] for d in page2["devices"]] == [idents[2].device_id.hex()]
    assert (
        page2["next"] is None
        and page2["devices"][0]["epochs"] == []
        and page2["devices"][0]["quality"] is None
    )
    status, none = await _get(f"{url}/v1/owners/0x{'11' * 20}/devices")
    assert status == 200 and none["devices"] == []
    assert (await _get(f"{url}/v1/owners/0xnope/devices"))[0] == 400


async def test_the_counts_use_the_index(served: tuple[str, Store, int]) -> None:
    _, store, _ = served
    await store.pool.execute(
        """INSERT INTO device_epoch_counts (device_id, epoch, shard, packets)
           SELECT sha256(int4send(i % 2000)), i / 2000, 0, 1 FROM generate_series(1, 40000) i"""
    )
    await store.pool.execute("ANALYZE device_epoch_counts")
    plan = "\n".join(
        r[0]
        for r in await store.pool.fetch(
            """EXPLAIN SELECT epoch, sum(packets) FROM device_epoch_counts WHERE device_id = $1
               GROUP BY epoch ORDER BY epoch DESC LIMIT 10""",
            b"x" * 32,
        )
    )
    assert "Seq Scan" not in plan, plan
