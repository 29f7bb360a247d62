"""UsageBatcher (ingest/api/usage_batch.py): usages that arrive while a write is in flight go out
together in the next write, each caller gets its own key's daily total once its units are written,
and a failed write fails exactly the callers whose units it held."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

import pytest

from ingest.api.usage_batch import Batch, UsageBatcher


class FakeStore:
    """Adds batches to running totals; `gate` holds each write until the test lets it go."""

    def __init__(self) -> None:
        self.writes: list[Batch] = []
        self.daily: Counter[tuple[str, int]] = Counter()
        self.cells: Counter[tuple[str, int, int]] = Counter()
        self.gate = asyncio.Event()
        self.fail_next = False

    async def write(self, batch: Batch) -> Mapping[tuple[str, int], int]:
        self.writes.append({k: Counter(v) for k, v in batch.items()})
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database gone")
        for (key_id, day, _, _), units in batch.items():
            self.daily[(key_id, day)] += sum(units.values())
            for (cell, epoch), n in units.items():
                self.cells[(key_id, cell, epoch)] += n
        return {(k, d): self.daily[(k, d)] for k, d, _, _ in batch}


async def test_usages_arriving_during_a_write_share_the_next_one() -> None:
    store = FakeStore()
    batcher = UsageBatcher(store.write)
    first = asyncio.create_task(batcher.add("dpk_a", 7, {(1, 1): 3}, epoch=3))
    await asyncio.sleep(0)  # the first write starts and waits at the gate
    later = [
        asyncio.create_task(batcher.add(key, 7, {(cell, 1): 1}, epoch=3))
        for key, cell in [("dpk_a", 1), ("dpk_a", 2), ("dpk_b", 1), ("dpk_b", 1)]
    ]
    await asyncio.sleep(0)
    assert len(store.writes) == 1 and not first.done()
    store.gate.set()
    assert await first == 3
    totals = await asyncio.gather(*later)
    assert len(store.writes) == 2  # the four that waited went out together
    together = {
        ("dpk_a", 7, 3, False): Counter({(1, 1): 1, (2, 1): 1}),
        ("dpk_b", 7, 3, False): Counter({(1, 1): 2}),
    }
    assert store.writes[1] == together
    assert totals == [5, 5, 2, 2]  # each caller: its key's day total after the write holding its units
    assert store.cells == Counter({("dpk_a", 1, 1): 4, ("dpk_a", 2, 1): 1, ("dpk_b", 1, 1): 2})


async def test_a_failed_write_fails_its_callers_only_and_the_next_write_goes_on() -> None:
    store = FakeStore()
    batcher = UsageBatcher(store.write)
    store.fail_next = True
    doomed = [asyncio.create_task(batcher.add("dpk_a", 7, {(1, 1): 1}, epoch=3)) for _ in range(3)]
    await asyncio.sleep(0)
    after = asyncio.create_task(batcher.add("dpk_a", 7, {(1, 1): 10}, epoch=3))  # waits for the next write
    store.gate.set()
    for task in doomed:
        with pytest.raises(ConnectionError):
            await task
    assert await after == 10  # only what was written counts
    assert store.daily == Counter({("dpk_a", 7): 10})
    assert await batcher.add("dpk_a", 7, {(1, 1): 1}, epoch=3) == 11  # and later writes still happen


async def test_a_cancelled_caller_does_not_cancel_the_write_of_the_others() -> None:
    store = FakeStore()
    batcher = UsageBatcher(store.write)
    gone = asyncio.create_task(batcher.add("dpk_a", 7, {(1, 1): 1}, epoch=3))
    stays = asyncio.create_task(batcher.add("dpk_b", 7, {(1, 1): 2}, epoch=3))
    await asyncio.sleep(0)
    gone.cancel()
    store.gate.set()
    assert await stays == 2
    assert store.daily == Counter({("dpk_a", 7): 1, ("dpk_b", 7): 2})  # written: it may have been sent


async def test_one_keys_queries_of_other_epochs_or_prepaid_stay_apart_and_share_the_days_total() -> None:
    """A use is (key, day, epoch the query ran in, prepaid): the store stamps each epoch (and prices the
    prepaid part) on its own, while the caller's total is the key's day."""
    store = FakeStore()
    batcher = UsageBatcher(store.write)
    first = asyncio.create_task(batcher.add("dpk_a", 7, {(1, 1): 1}, epoch=3))
    await asyncio.sleep(0)
    later = [
        asyncio.create_task(batcher.add("dpk_a", 7, {(1, 1): 2}, epoch=3)),
        asyncio.create_task(batcher.add("dpk_a", 7, {(1, 1): 4}, epoch=4)),
        asyncio.create_task(batcher.add("dpk_a", 7, {(1, 1): 8}, epoch=4, prepaid=True)),
    ]
    await asyncio.sleep(0)
    store.gate.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [15, 15, 15]
    assert store.writes[1] == {
        ("dpk_a", 7, 3, False): Counter({(1, 1): 2}),
        ("dpk_a", 7, 4, False): Counter({(1, 1): 4}),
        ("dpk_a", 7, 4, True): Counter({(1, 1): 8}),
    }
