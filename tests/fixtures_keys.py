"""API key fixtures: a buyer's key in the test's database, for tests that call keyed endpoints
(ingest/core/apikeys.py `ACCESS`: readings, aggregates, export, usage)."""

from __future__ import annotations

import pytest_asyncio

from ingest.adapters.store.keys import KeyStore
from tests.fixtures_pg import Store

__all__ = ["api_key", "bearer", "seed_station"]


def bearer(key: str) -> dict[str, str]:
    """The request header that presents `key`."""
    return {"Authorization": f"Bearer {key}"}


@pytest_asyncio.fixture
async def api_key(store: Store) -> str:
    """A key with scopes read and export, no quota, and a rate no test reaches (the rate limit has
    tests of its own), created in the `store` fixture's database."""
    key, _ = await KeyStore(store.pool).create("test buyer", ("read", "export"), rate=1e6, burst=1e6)
    return key


async def seed_station(store: Store, now_ms: int, n: int = 10, lat: float = 52.52) -> bytes:
    """A weather station with `n` readings in the minutes before `now_ms`, stored through the real
    pipeline; returns its device id."""
    from devices.keys import new_identity
    from devices.protocol.model import DeviceRecord, Reading
    from devices.protocol.topics import up_topic
    from devices.sdk import build_message
    from ingest.pipeline import Incoming, PipelineConfig, PipelineState, sort_batch

    ident = new_identity()
    registry = {ident.device_id: DeviceRecord(ident.device_id, ident.pubkey, "0x" + "12" * 20, 2, 0, True)}
    msgs = [
        Incoming(
            up_topic(ident.device_id),
            build_message(
                ident, seq, "weather", [Reading(now_ms - 60_000 * (n - seq + 1), lat, 13.4, {"t": 1.0})]
            ),
            now_ms,
        )
        for seq in range(1, n + 1)
    ]
    out = sort_batch(msgs, registry.get, now_ms, PipelineConfig(), PipelineState())
    assert not out.rejected, out.rejected
    await store.write_batch(out.accepted, [])
    return ident.device_id
