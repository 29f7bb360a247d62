"""`device_state` (the stateful rules' rows, migration 023) is pruned of devices silent for
DEPIN_DEVICE_STATE_IDLE_DAYS (migration 024's `touched_at`), in batches, and never of a device a batch
wrote while the pruner waited for its row. On the real PostgreSQL; the `depin run` wiring is in
tests/integration/test_rejection_rows.py."""

from __future__ import annotations

import asyncio
import os

import pytest
from prometheus_client import REGISTRY

from ingest.core import state as device_state
from ingest.retention import prune_device_state
from tests.fixtures_pg import Store

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


async def _put(store: Store, device: bytes, days_ago: float) -> None:
    await store.pool.execute(
        """INSERT INTO device_state (device_id, state, touched_at)
           VALUES ($1, $2, now() - make_interval(secs => $3))""",
        device,
        device_state.encode(device_state.DeviceState()),
        days_ago * 86_400,
    )


async def _ids(store: Store) -> set[bytes]:
    return {bytes(r[0]) for r in await store.pool.fetch("SELECT device_id FROM device_state")}


async def test_rows_of_silent_devices_go_in_batches(store: Store) -> None:
    silent = [os.urandom(32) for _ in range(9)]
    recent = [os.urandom(32) for _ in range(3)]
    for d in silent:
        await _put(store, d, 31)
    for d in recent:
        await _put(store, d, 29)
    before = REGISTRY.get_sample_value("depin_device_state_pruned_total") or 0.0
    now_ms = int(await store.pool.fetchval("SELECT extract(epoch FROM now()) * 1000"))
    assert await store.prune_device_state(now_ms - 30 * DAY_MS, batch=4) == 9
    assert await _ids(store) == set(recent)
    assert await prune_device_state(store, 30 * DAY_MS, now_ms) == 0
    assert await prune_device_state(store, 0, now_ms + 90 * DAY_MS) == 0  # 0: keep forever
    assert await _ids(store) == set(recent)
    assert await prune_device_state(store, 28 * DAY_MS, now_ms) == 3
    assert REGISTRY.get_sample_value("depin_device_state_pruned_total") == before + 3


async def test_a_device_written_while_the_pruner_waits_keeps_its_state(store: Store) -> None:
    """A batch holds the row of a silent device (as `_judge_with_state` does) when the pruner comes:
    the pruner waits for the commit, sees the new `touched_at` and leaves the row."""
    device, other = os.urandom(32), os.urandom(32)
    await _put(store, device, 40)
    await _put(store, other, 40)
    now_ms = int(await store.pool.fetchval("SELECT extract(epoch FROM now()) * 1000"))
    async with store.pool.acquire() as batch, batch.transaction():
        await batch.execute(
            "UPDATE device_state SET state = $2, touched_at = now() WHERE device_id = $1", device, b"[]"
        )
        pruning = asyncio.create_task(store.prune_device_state(now_ms - 30 * DAY_MS))
        await asyncio.sleep(0.3)
        assert not pruning.done()  # waiting on the batch's row lock
    assert await asyncio.wait_for(pruning, 10) == 1  # `other` only
    assert await _ids(store) == {device}
    assert await store.pool.fetchval("SELECT state FROM device_state WHERE device_id = $1", device) == b"[]"
