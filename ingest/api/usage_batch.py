"""Group commit of the API's usage writes: requests whose usage is ready while a write is in flight
are written together by the next one, in one statement (`KeyStore.record_usage_batch`: one transaction,
the seal lock taken shared, then that statement).

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
from typing import Any

Units = Mapping[tuple[int, int], int]  # (res-7 cell, epoch of the readings) → units
# Whose units and when: (key id, UTC day, epoch by the clock when the query ran, the key is prepaid).
# The day is what the quota counts; the epoch is the one the units count in for demand and, for a
# prepaid key, for revenue (or the first one not sealed, if it is: KeyStore.record_usage_batch).
Use = tuple[str, int, int, bool]
Batch = dict[Use, Counter[tuple[int, int]]]
Totals = Mapping[tuple[str, int], int]  # each (key id, day)'s total
Write = Callable[[Batch], Awaitable[Totals]]  # one batch, one transaction


class UsageBatcher:
    """`await add(key_id, day, units, epoch=…)` returns the key's total for `day` once its units are
    committed."""

    def __init__(self, write: Write) -> None:
        self._write = write
        self._pending: Batch = {}
        self._done: asyncio.Future[Mapping[tuple[str, int], int]] | None = None  # the pending batch's
        self._writer: asyncio.Task[None] | None = None

    async def add(self, key_id: str, day: int, units: Units, *, epoch: int, prepaid: bool = False) -> int:
        """`epoch`: when the query ran, by the clock; `prepaid`: its units are spend too."""
        self._pending.setdefault((key_id, day, epoch, prepaid), Counter()).update(units)
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
            batch, done = self._pending, self._done
            self._pending, self._done = {}, None
            assert done is not None
            try:
                totals = await self._write(batch)
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
