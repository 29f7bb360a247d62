"""Buyers' usage is final once its epoch is sealed (README "API access", docs/DESIGN.md §6, migration 021):
a query of a closed epoch's data, or a prepaid key's spend written after the seal, counts in the next
epoch's demand and revenue, and `depin epoch verify` of the closed epoch still agrees; usage written
while epochs are sealed and closed is counted in exactly one epoch."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import h3
import pytest

from devices.protocol.model import DeviceRecord, Reading
from ingest.adapters.db import MIGRATIONS_DIR, create_pool, migrate
from ingest.adapters.store import EpochStore
from ingest.adapters.store.keys import KeyStore
from ingest.adapters.store.payouts import PayoutStore
from ingest.api.app import create_app
from ingest.api.auth import ApiAccess
from ingest.api.metering import EpochGrid
from ingest.cli import main
from ingest.core.market import MarketParams, account_of
from ingest.core.metering import meter_cell
from ingest.epochs import EpochConfig, Epochs
from ingest.model import AcceptedPacket
from ingest.scoring import verify_epoch
from ingest.service import serve_api
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration

PRICE = 10**15
CELL = h3.str_to_int(h3.latlng_to_cell(52.5, 13.40, 9))
CELL7 = meter_cell(CELL)


def dev(n: int) -> bytes:
    return hashlib.sha256(b"useal-device" + bytes([n])).digest()


def packet(device: int, seq: int, ts: int, n: int = 3) -> AcceptedPacket:
    readings = tuple(Reading(ts_ms=ts + i, lat=52.5, lon=13.4, vals={"t": 20.0 + i}) for i in range(n))
    digest = hashlib.sha256(dev(device) + seq.to_bytes(8, "big")).digest()
    return AcceptedPacket(
        device_id=dev(device),
        seq=seq,
        kind="weather",
        payload_digest=digest,
        received_ms=ts,
        readings=readings,
        cells=(CELL,) * n,
        flags=(0,) * n,
        message_digest=hashlib.sha256(b"msg" + digest).digest(),
    )


async def prepay(store: Store, key_id: str, amount: int) -> None:
    """A deposit for the key as the market mirror stores it (no chain needed to score)."""
    # The mirror's cursor: deposits count up to it.
    await PayoutStore(store.pool).rewind("0x" + "00" * 20, 1, 0)
    await store.pool.execute(
        """INSERT INTO market_deposits (tx_hash, log_index, block, account, payer, amount)
           VALUES ($1, 0, 1, $2, '0x00', $3)""",
        hashlib.sha256(key_id.encode()).digest(),
        account_of(key_id),
        amount,
    )


def demand_units(manifest: dict[str, Any]) -> int:
    return sum(int(u) for _, u in manifest["usage"])


def spent_units(manifest: dict[str, Any]) -> int:
    return sum(int(a) for _, _, _, a in manifest["market"]["spends"]) // PRICE


async def test_a_query_after_the_close_counts_in_the_next_epoch_and_the_closed_one_still_verifies(
    store: Store, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Epoch 5 is closed while the API's clock still says epoch 5 (the close is due at its end + grace;
    a clock behind, or a write that took that long, is the same case). A buyer then queries epoch 5's
    readings with a plain key and a prepaid one: their units stay in `usage` under epoch 5 (GET
    /v1/usage), but count in epoch 6's demand and revenue; epoch 5 verifies before and after."""
    monkeypatch.setenv("DEPIN_DATABASE_URL", pg_dsn)
    await store.upsert_devices(
        [DeviceRecord(dev(d), b"k" * 32, f"0x{0xA1 + d:040x}", 1, 0, True, 10 + d) for d in range(2)],
        block=10,
    )
    await store.pool.execute(
        "INSERT INTO hw_classes (id, name, max_speed_kmh, h3_res, enabled) VALUES (1, 'weather', 0, 9, true)"
    )
    length = 600_000
    genesis = time.time_ns() // 1_000_000 - 4 * length - length // 2  # now: the middle of epoch 5
    for d in range(2):
        assert (await store.write_batch([packet(d, d + 1, genesis + 4 * length + 1_000 + d)], [])).stored == 1
    keys = KeyStore(store.pool)
    plain, plain_record = await keys.create("plain", ("read",))
    paid, paid_record = await keys.create("prepaid", ("read",))
    await prepay(store, paid_record.key_id, 100 * PRICE)
    config = EpochConfig(
        genesis_ms=genesis, length_ms=length, emission=1_000_000, demand_epochs=1, market=MarketParams()
    )
    epochs = Epochs(store, None, config)

    async def ready() -> dict[str, Any]:
        return {"ready": True, "failing": []}

    app = create_app(store, ready, access=ApiAccess(grid=EpochGrid(genesis, length), price_per_unit=PRICE))
    async with serve_api(app, "127.0.0.1", 0) as url, aiohttp.ClientSession() as http:

        async def query(key: str) -> None:
            async with http.get(
                f"{url}/v1/readings",
                params={"cell": f"{CELL7:x}"},
                headers={"Authorization": f"Bearer {key}"},
            ) as r:
                assert r.status == 200 and len((await r.json())["readings"]) == 6

        await query(paid)  # before the close: counts in epoch 5
        fifth = await epochs.close(5)
        assert (demand_units(fifth.manifest), spent_units(fifth.manifest)) == (6, 6)
        assert await asyncio.to_thread(main, ["epoch", "verify", "5", "--no-chain"]) == 0
        for key in (plain, paid, paid):  # after it: the clock still says 5, the units count in 6
            await query(key)
        async with http.get(f"{url}/v1/usage", headers={"Authorization": f"Bearer {paid}"}) as r:
            usage = await r.json()
    assert [(u["epoch"], u["units"]) for u in usage["usage"]] == [(5, 18)]  # per epoch of the readings
    assert usage["credit"]["spent"] == str(18 * PRICE)

    assert await asyncio.to_thread(main, ["epoch", "verify", "5", "--no-chain"]) == 0
    assert "epoch 5 verified" in capsys.readouterr().out
    rows = await store.pool.fetch("SELECT key_id, epoch, units FROM usage_demand ORDER BY epoch, key_id")
    assert sorted(tuple(r) for r in rows) == sorted(
        [(paid_record.key_id, 5, 6), (paid_record.key_id, 6, 12), (plain_record.key_id, 6, 6)]
    )
    spend = await store.pool.fetch("SELECT spent_epoch, epoch, units FROM usage_spend ORDER BY spent_epoch")
    assert [tuple(r) for r in spend] == [(5, 5, 6), (6, 5, 12)]

    sixth = await epochs.close(6)
    assert demand_units(sixth.manifest) == 18  # both keys' queries after the seal of 5
    assert spent_units(sixth.manifest) == 12  # the prepaid key's
    m = sixth.manifest["market"]
    assert int(m["revenue"]) == 12 * PRICE
    # paid to the devices that collected epoch 5's readings in the cell (they earned in epoch 5)
    paid_to = {p["owner"] for p in m["payouts"] if p["kind"] == "revenue"}
    assert paid_to == {f"0x{0xA1:040x}", f"0x{0xA2:040x}"}
    for n in (5, 6):
        assert await asyncio.to_thread(main, ["epoch", "verify", str(n), "--no-chain"]) == 0
    assert fifth.manifest == (await store.get_epoch(5)).manifest  # type: ignore[union-attr]


class _SlowCommit:
    """A connection whose COMMIT waits a little first: the window between the usage statement (which
    read the watermark) and its commit, where a seal without the shared lock would slip in."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def execute(self, query: str, *args: Any) -> str:
        if query == "COMMIT":
            await asyncio.sleep(random.uniform(0, 0.01))
        return cast(str, await self._conn.execute(query, *args))


class _SlowCommitPool:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[_SlowCommit]:
        async with self._pool.acquire() as conn:
            yield _SlowCommit(conn)


async def test_usage_written_while_epochs_are_sealed_counts_in_exactly_one_epoch(
    store: Store, pg_dsn: str
) -> None:
    """Writers whose queries all ran in epoch 1 (by their clock) write usage while epochs 1, 2, 3, …
    are sealed and closed: each unit counts in exactly one epoch's demand (and the prepaid key's in
    exactly one epoch's revenue), the sums over the epochs are what was written, and every epoch
    verifies afterwards. The writers have a pool of their own (as the API has), and half of them commit
    a few ms after their statement (without the shared seal lock, this fails)."""
    api_pool = await create_pool(pg_dsn, max_size=8)
    try:
        await _race(store, KeyStore(api_pool), KeyStore(cast(Any, _SlowCommitPool(api_pool))))
    finally:
        await api_pool.close()


async def _race(store: Store, keys: KeyStore, slow: KeyStore) -> None:
    _, plain = await keys.create("plain", ("read",))
    _, paid = await keys.create("prepaid", ("read",))
    await prepay(store, paid.key_id, 10**9 * PRICE)
    cells = [meter_cell(h3.str_to_int(h3.latlng_to_cell(52.5, 13.40 + i / 10, 9))) for i in range(3)]
    config = EpochConfig(
        genesis_ms=0, length_ms=60_000, emission=1_000, demand_epochs=1, market=MarketParams()
    )
    epochs = Epochs(store, None, config)
    written = {plain.key_id: 0, paid.key_id: 0}
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        rnd = random.Random(n)
        store_ = slow if n % 2 else keys
        while not stop.is_set():
            batch: dict[tuple[str, int, int, bool], dict[tuple[int, int], int]] = {}
            for key_id in (plain.key_id, paid.key_id):
                units = {(rnd.choice(cells), 1): rnd.randint(1, 5) for _ in range(2)}
                batch[(key_id, 20_000, 1, key_id == paid.key_id)] = units
            await store_.record_usage_batch(batch, price=PRICE)
            for (key_id, _, _, _), units in batch.items():
                written[key_id] += sum(units.values())

    async def closer() -> int:
        last = 0
        for last in range(1, 9):
            await asyncio.sleep(0.02)
            await epochs.close(last)
        stop.set()
        return last

    *_, last = await asyncio.gather(*(writer(n) for n in range(6)), closer())
    last += 1
    await epochs.close(last)  # what was written after the last seal during the run: nothing later
    manifests = {n: await store.manifest(n) for n in range(1, last + 1)}  # assembled: header and rows
    demand = {n: demand_units(m) for n, m in manifests.items()}
    spent = {n: spent_units(m) for n, m in manifests.items()}
    assert sum(demand.values()) == written[plain.key_id] + written[paid.key_id], demand
    assert sum(spent.values()) == written[paid.key_id], spent
    assert sum(1 for units in demand.values() if units) >= 3, demand  # the writes did span the seals
    stamped = await store.pool.fetchval("SELECT sum(units) FROM usage_demand WHERE epoch > $1", last)
    assert stamped is None
    for n, m in manifests.items():
        assert await verify_epoch(store, n, m) is None, n


async def test_migration_021_keeps_the_demand_of_epochs_closed_before_it(pg_dsn: str, tmp_path: Path) -> None:
    """On a populated database: existing `usage` rows count in the epoch of their readings (the sum the
    old rule read), so a closed epoch's demand is recomputed as before; a later write lands after the
    watermark and changes no sealed epoch's window."""
    for p in MIGRATIONS_DIR.glob("*.sql"):
        if p.name < "021":
            shutil.copy(p, tmp_path / p.name)
    pool = await create_pool(pg_dsn)
    try:
        await migrate(pool, tmp_path)
        await pool.execute(
            """INSERT INTO api_keys (key_id, key_sha256, name, scopes)
               VALUES ('dpk_old00001', '\\x00', 'o', '{}')"""
        )
        await pool.executemany(
            "INSERT INTO usage (key_id, cell, epoch, units) VALUES ('dpk_old00001', $1, $2, $3)",
            [(CELL7, 3, 7), (CELL7, 4, 5), (CELL7 + 1, 4, 0), (CELL7, 6, 2)],
        )
        old = {
            r["cell"]: r["units"]
            for r in await pool.fetch(
                """SELECT cell, sum(units)::bigint AS units FROM usage
                   WHERE epoch BETWEEN 2 AND 4 GROUP BY cell"""
            )
            if r["units"] > 0
        }
        assert (await migrate(pool)).applied[0] == "021_usage_demand.sql"  # then any later ones
        rows = await pool.fetch("SELECT key_id, epoch, cell, units FROM usage_demand ORDER BY epoch")
        assert [tuple(r) for r in rows] == [
            ("dpk_old00001", 3, CELL7, 7),
            ("dpk_old00001", 4, CELL7, 5),
            ("dpk_old00001", 6, CELL7, 2),
        ]
        epochs = EpochStore(pool)
        assert await epochs.usage_by_cell(2, 4) == old == {CELL7: 12}
        await epochs.seal_epoch(4, 0)
        await KeyStore(pool).record_usage("dpk_old00001", 20_000, 4, {(CELL7, 4): 9})
        assert await epochs.usage_by_cell(2, 4) == old  # epoch 4 is sealed: the write counts in 5
        assert await epochs.usage_by_cell(5, 5) == {CELL7: 9}
    finally:
        await pool.close()
