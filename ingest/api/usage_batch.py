"""Group commit of the API's usage writes: requests whose usage is ready while a write is in flight
are written together by the next one, in one statement (`KeyStore.record_usage_batch`).

Each request still waits until the write holding its units has committed, and a failed write fails
every request in it (each answers 503, nothing sent): data is never served unpaid, and nothing is
held in memory that a restart could lose. What changes is the cost: one write per process at a time,
for all the requests that finished meanwhile, instead of one transaction per request whose commits
queue on the same key's rows. One writer per process also means a key's rows are never locked by two
writes of the same process at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

Units = Mapping[tuple[int, int], int]  # (res-7 cell, epoch) → units
Batch = dict[tuple[str, int], Counter[tuple[int, int]]]  # (key id, UTC day) → units
# A prepaid key's units again, per (key id, epoch the query ran in): what its credit pays for
# (`usage_spend`, migration 017). Written by the same statement as the batch.
Spend = dict[tuple[str, int], Counter[tuple[int, int]]]
Totals = Mapping[tuple[str, int], int]  # each (key id, day)'s total


class Write(Protocol):
    """Writes a batch (and the spend of its prepaid keys, when there is some) in one statement."""

    def __call__(self, batch: Batch, spend: Spend | None = None, /) -> Awaitable[Totals]: ...


_PlainWrite = Callable[[Batch], Awaitable[Totals]]


class UsageBatcher:
    """`await add(key_id, day, units)` returns the key's total for `day` once its units are committed."""

    def __init__(self, write: Write | _PlainWrite) -> None:
        self._write = write
        self._pending: Batch = {}
        self._spend: Spend = {}
        self._done: asyncio.Future[Mapping[tuple[str, int], int]] | None = None  # the pending batch's
        self._writer: asyncio.Task[None] | None = None

    async def add(self, key_id: str, day: int, units: Units, spent_epoch: int | None = None) -> int:
        """`spent_epoch`: the key is prepaid and the query ran in this epoch (its units are spend too)."""
        self._pending.setdefault((key_id, day), Counter()).update(units)
        if spent_epoch is not None:
            self._spend.setdefault((key_id, spent_epoch), Counter()).update(units)
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            self._done.add_done_callback(_retrieve)
        done = self._done
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # Shielded: a request cancelled meanwhile does not cancel the write others wait for.
        totals = await asyncio.shield(done)
        return totals[(key_id, day)]

    async def _drain(self) -> None:
        while self._pending:
            batch, spend, done = self._pending, self._spend, self._done
            self._pending, self._spend, self._done = {}, {}, None
            assert done is not None
            try:
                # without spend the one-argument call: a plain writer (tests) needs no second argument
                totals = await (self._write(batch, spend) if spend else self._write(batch))  # type: ignore[call-arg]
            except Exception as exc:
                done.set_exception(exc)
            except BaseException:  # cancelled (the app stopping): nobody may wait forever
                for waiting in (done, self._done):
                    if waiting is not None:
                        waiting.cancel()
                raise
            else:
                done.set_result(totals)


def _retrieve(done: asyncio.Future[Any]) -> None:
    # Every waiter may have been cancelled: mark a failure seen so asyncio does not log it as lost.
    if not done.cancelled():
        done.exception()
