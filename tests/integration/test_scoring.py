"""Scoring at epoch close on a real PostgreSQL (no chain): freshness from the previous epoch's rewards,
demand from metered usage, signed boosts (one by an unlisted key, ignored), a stationary class; the
manifest carries every input and `verify_epoch` recomputes it from the manifest and from the database,
naming the first difference after a reading or the manifest is tampered with."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import h3
import pytest
from web3 import AsyncWeb3

from devices.chain.deployment import Deployment
from devices.chain.distributor import DistributorClient
from devices.chain.signer import Signer
from devices.protocol.model import DeviceRecord, Reading
from ingest.api.app import create_app
from ingest.api.auth import ApiAccess
from ingest.api.metering import EpochGrid
from ingest.cli import main
from ingest.core import boosts as bst
from ingest.core.metering import meter_cell
from ingest.epochs import EpochConfig, Epochs
from ingest.model import AcceptedPacket
from ingest.scoring import verify_epoch
from ingest.service import serve_api
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration

L = 60_000
# Three resolution-9 cells in different resolution-7 cells (usage is metered per resolution-7 cell)
CELLS = tuple(h3.str_to_int(h3.latlng_to_cell(52.5, lon, 9)) for lon in (13.40, 13.50, 13.60))
OPERATOR_KEY = "0x" + "11" * 32
STRANGER_KEY = "0x" + "22" * 32
OWNERS = [f"0x{i:040x}" for i in (0xA1, 0xA2, 0xA3)]


def dev(n: int) -> bytes:
    return hashlib.sha256(b"score-device" + bytes([n])).digest()


def packet(device: int, seq: int, ts: int, flags: int = 0) -> AcceptedPacket:
    readings = tuple(Reading(ts_ms=ts + i, lat=52.5, lon=13.4, vals={"t": 20.0 + i}) for i in range(3))
    digest = hashlib.sha256(dev(device) + seq.to_bytes(8, "big")).digest()
    return AcceptedPacket(
        device_id=dev(device),
        seq=seq,
        kind="weather",
        payload_digest=digest,
        received_ms=ts,
        readings=readings,
        cells=(CELLS[device],) * 3,
        flags=(0, 0, flags),
        message_digest=hashlib.sha256(b"msg" + digest).digest(),
    )


async def seed(store: Store) -> tuple[Epochs, int]:
    await store.upsert_devices(
        [DeviceRecord(dev(d), b"k" * 32, OWNERS[d], 1 if d < 2 else 2, 0, True, 10 + d) for d in range(3)],
        block=10,
    )
    await store.pool.execute(
        """INSERT INTO hw_classes (id, name, max_speed_kmh, h3_res, enabled) VALUES
           (1, 'dashcam', 150, 9, true), (2, 'weather', 0, 9, true)"""
    )
    genesis = (time.time_ns() // 1_000_000 // L) * L - 300 * L
    seq = 0
    for epoch in (1, 2):
        for d in range(3):
            seq += 1
            res = await store.write_batch(
                [packet(d, seq, genesis + (epoch - 1) * L + 1_000 + d, flags=d == 1)], []
            )
            assert res.stored == 1
    operator = bst.sign(bst.Boost(CELLS[1], 20_000, 2, 3, 1_000), OPERATOR_KEY)
    stranger = bst.sign(bst.Boost(CELLS[0], 90_000, 1, 9, 2_000), STRANGER_KEY)
    for b in (operator, stranger):
        await store.add_boost(b)
    await store.pool.execute(
        "INSERT INTO api_keys (key_id, key_sha256, name, scopes) VALUES ('dpk_test0001', '\\x00', 't', '{}')"
    )
    await store.pool.execute(
        "INSERT INTO usage_demand (key_id, epoch, cell, units) VALUES ('dpk_test0001', 2, $1, 500)",
        meter_cell(CELLS[0]),
    )
    config = EpochConfig(
        genesis_ms=genesis,
        length_ms=L,
        emission=1_000_000,
        refill_epochs=4,
        cell_readings_target=2,
        demand_units=1_000,
        boost_signers=(operator.signer,),
    )
    return Epochs(store, None, config), genesis


async def test_factors_manifest_and_verify(store: Store) -> None:
    epochs, _ = await seed(store)
    first = await epochs.close(1)
    first_manifest = await store.manifest(1)  # the whole document, assembled from the stored rows
    assert first_manifest is not None
    assert [c["freshness"] for c in first_manifest["cell_factors"]] == [10_000] * 3
    second = await epochs.close(2)
    assert "devices" not in second.manifest and second.manifest["root"] == "0x" + second.root.hex()
    m = await store.manifest(2)
    assert m is not None
    by_cell = {int(c["cell"], 16): c for c in m["cell_factors"]}
    # mobile cells paid in epoch 1 weigh 1/4; the station's cell keeps full freshness
    assert [by_cell[c]["freshness"] for c in CELLS] == [2_500, 2_500, 10_000]
    assert [by_cell[c]["demand"] for c in CELLS] == [15_000, 10_000, 10_000]  # 500 units / 1000
    assert [by_cell[c]["boost"] for c in CELLS] == [10_000, 20_000, 10_000]  # the stranger's is ignored
    assert [b["signer"] for b in m["boosts"]] == [epochs.config.boost_signers[0]]
    # device 1 has 2 clean of 3 readings: quality 6666, depth 2×6666/2 = full
    dev1 = next(d for d in m["devices"] if d["device_id"] == dev(1).hex())
    assert (dev1["readings"], dev1["flagged"], dev1["quality"], dev1["rank"]) == (2, 1, 6_666, 1)
    assert sum(int(d["amount"]) for d in m["devices"]) == int(m["allocated"]) == second.allocated
    assert second.allocated + second.unissued == 1_000_000
    # the summary columns (migration 012) and the explain rows
    row = await store.pool.fetchrow("SELECT params, cells, devices, owners FROM epochs WHERE epoch = 2")
    assert (row["params"], row["cells"], row["devices"], row["owners"]) == (m["params"], 3, 3, 3)
    cells = await store.pool.fetch(
        "SELECT cell, freshness, paid FROM epoch_cells WHERE epoch = 2 ORDER BY cell"
    )
    assert [(r["cell"], r["freshness"]) for r in cells] == sorted((c, by_cell[c]["freshness"]) for c in CELLS)

    assert await verify_epoch(store, 2, m, second.root) is None
    assert await verify_epoch(store, 1, first_manifest, first.root) is None
    wrong_root = await verify_epoch(store, 2, m, b"\x01" * 32)
    assert wrong_root is not None and "root on chain" in wrong_root

    tampered = copy.deepcopy(m)
    tampered["devices"][0]["amount"] = str(int(tampered["devices"][0]["amount"]) + 1)
    found = await verify_epoch(store, 2, tampered)
    assert found is not None and "own inputs" in found and ".devices[0].amount" in found

    forged = copy.deepcopy(m)
    forged["boosts"][0]["factor_bps"] = 30_000
    found = await verify_epoch(store, 2, forged)
    assert found is not None and "boost" in found

    # a reading flipped to flagged after the close: the database no longer gives the stored result
    await store.pool.execute(
        "UPDATE readings SET flags = 1 WHERE device_id = $1 AND ts >= $2",
        dev(0),
        await _start(store, 2),
    )
    found = await verify_epoch(store, 2, m)
    assert found is not None and "stored data" in found, found


async def _start(store: Store, epoch: int) -> object:
    return await store.pool.fetchval("SELECT start_at FROM epochs WHERE epoch = $1", epoch)


async def test_cli_boost_verify_explain_and_the_device_endpoint(
    store: Store,
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_file = tmp_path / "operator.key"
    key_file.write_text(OPERATOR_KEY + "\n")
    monkeypatch.setenv("DEPIN_DATABASE_URL", pg_dsn)
    monkeypatch.setenv("DEPIN_OPERATOR_KEY_FILE", str(key_file))
    epochs, _ = await seed(store)
    code = await asyncio.to_thread(
        main, ["boost", "set", hex(CELLS[2])[2:], "1.5", "--from", "2", "--to", "2"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"cell {hex(CELLS[2])} × 1.5 for epochs 2..2" in out and "not in DEPIN_BOOST_SIGNERS" in out
    await epochs.close(1)
    await epochs.close(2)
    second = await store.manifest(2)
    assert second is not None
    by_cell = {int(c["cell"], 16): c for c in second["cell_factors"]}
    assert by_cell[CELLS[2]]["boost"] == 15_000  # signed by the operator key the closer trusts

    assert await asyncio.to_thread(main, ["epoch", "verify", "2", "--no-chain"]) == 0
    assert "epoch 2 verified" in capsys.readouterr().out

    assert await asyncio.to_thread(main, ["epoch", "explain", "2", "--device", dev(2).hex(), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cells"][0]["factors"] == {
        "base": 10_000,
        "boost": 15_000,
        "freshness": 10_000,
        "demand": 10_000,
    }
    assert doc["cells"][0]["rank"] == 1 and doc["amount"] == next(
        d["amount"] for d in second["devices"] if d["device_id"] == dev(2).hex()
    )
    assert await asyncio.to_thread(main, ["epoch", "explain", "2", "--device", dev(2).hex()]) == 0
    assert "1.5" in capsys.readouterr().out

    async def ready() -> dict[str, Any]:
        return {"ready": True, "failing": []}

    app = create_app(store, ready, access=ApiAccess(grid=EpochGrid(epochs.config.genesis_ms, L)))
    async with serve_api(app, "127.0.0.1", 0) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/epochs/2/devices/{dev(2).hex()}") as r:
            assert r.status == 200 and await r.json() == doc  # public, the same as explain --json
        async with http.get(f"{url}/v1/epochs/2/devices/{'00' * 32}") as r:
            assert r.status == 404
        async with http.get(f"{url}/v1/epochs/9/devices/{dev(2).hex()}") as r:
            assert r.status == 404 and "not closed" in (await r.json())["error"]

    # a stored manifest row tampered with (a device paid one more): verify reads the manifest assembled
    # from the rows, exits 1 and names the entry
    tampered = await store.pool.fetchval(
        """UPDATE device_rewards SET amount = amount + 1 WHERE epoch = 2 AND device_id = $1
           RETURNING amount""",
        dev(2),
    )
    at = next(i for i, d in enumerate(second["devices"]) if d["device_id"] == dev(2).hex())
    assert await asyncio.to_thread(main, ["epoch", "verify", "2", "--no-chain"]) == 1
    err = capsys.readouterr().err
    assert f"does not follow from its own inputs: .devices[{at}].amount" in err, err
    assert f"stored '{tampered}'" in err, err
    await store.pool.execute(
        "UPDATE device_rewards SET amount = amount - 1 WHERE epoch = 2 AND device_id = $1", dev(2)
    )
    # so is the header (the root the manifest states)
    await store.pool.execute(
        "UPDATE epochs SET manifest = jsonb_set(manifest, '{allocated}', '\"1\"') WHERE epoch = 2"
    )
    assert await asyncio.to_thread(main, ["epoch", "verify", "2", "--no-chain"]) == 1
    assert ".allocated: recomputed" in capsys.readouterr().err
    await store.pool.execute(
        "UPDATE epochs SET manifest = jsonb_set(manifest, '{allocated}', to_jsonb(allocated::text)) "
        "WHERE epoch = 2"
    )
    assert await asyncio.to_thread(main, ["epoch", "verify", "2", "--no-chain"]) == 0
    capsys.readouterr()

    # a reading deleted after the close: verify exits 1 and names the first difference
    await store.pool.execute("DELETE FROM readings WHERE device_id = $1", dev(2))
    assert await asyncio.to_thread(main, ["epoch", "verify", "2", "--no-chain"]) == 1
    err = capsys.readouterr().err
    assert "epoch 2 does not verify: the stored data gives another result" in err, err


async def test_verify_compares_the_root_on_chain(
    store: Store,
    pg_dsn: str,
    w3: AsyncWeb3[Any],
    deployment: Deployment,
    signer: Signer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deployment_file = tmp_path / "deployment.json"
    deployment.save(deployment_file)
    monkeypatch.setenv("DEPIN_DATABASE_URL", pg_dsn)
    monkeypatch.setenv("DEPIN_DEPLOYMENT_FILE", str(deployment_file))
    monkeypatch.setenv("DEPIN_CHAIN_RPC_URL", w3.provider.endpoint_uri)
    seeded, _ = await seed(store)
    epochs = Epochs(store, DistributorClient(w3, deployment, signer), seeded.config)
    await epochs.close(1)
    assert (await epochs.publish(1)).status == "published"
    await epochs.close(2)  # closed, not published: no root on chain yet
    assert await asyncio.to_thread(main, ["epoch", "verify", "1"]) == 0
    assert "and the root on chain agree" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["epoch", "verify", "2"]) == 1
    assert f"root on chain 0x{'00' * 32}" in capsys.readouterr().err
