"""On-demand reads of device ids the registry mirror does not hold yet (the consumer's prefetch hook).

`prefetch(ids)` (called before a batch is judged) resolves ids the mirror does not hold with at most
one contract read per id per negative-cache TTL, a token-bucket read budget (over any T seconds at most
`budget + rate_s × T` reads), bounded concurrency and a time limit; reads stop while the RPC is down
(those ids stay unknown → `unknown_device`, never accepted). Found devices go to the mirror's overlay
(`RegistryMirror.resolved`), which the event fold supersedes.

Reads are never cancelled: web3 8 takes a threading.Lock for its session cache in an executor thread,
and a request cancelled while waiting for it leaves the lock taken for good, so every later chain call
(and the interpreter's exit) would hang. A read that outlives the time limit is left to finish in the
background (each ends within the provider's request timeout) and its answer dropped. The follower's
start-up sync (`RegistryFollower.first_sync`) follows the same rule (docs/RELIABILITY.md H46).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from devices.chain.registry import RegistryClient
from devices.protocol.model import DeviceRecord
from ingest import metrics
from ingest.core.negative_cache import NegativeCache, ReadBudget
from ingest.registry.mirror import RegistryMirror

# (block identifier to read at, block the fold must pass before the read is superseded)
ReadAt = tuple[Any, int]


class OnDemandReads:
    """The follower's reads of single devices. `on_failure` is told of a read that failed or timed
    out: the RPC counts as down (`depin_chain_rpc_up` 0, `/readyz` "chain") until a sync succeeds."""

    def __init__(
        self,
        client: RegistryClient,
        mirror: RegistryMirror,
        on_failure: Callable[[BaseException], None],
        *,
        negative_ttl_s: float,
        negative_max: int,
        budget: int,
        rate_s: float,
        concurrency: int,
        timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.mirror = mirror
        self.on_failure = on_failure
        self.negative = NegativeCache(negative_ttl_s, negative_max)
        self.read_budget = ReadBudget(rate_s, budget)
        self.timeout_s = timeout_s
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._abandoned: set[asyncio.Task[DeviceRecord | None]] = set()  # timed-out reads, still running
        self.reads: dict[str, int] = {"found": 0, "absent": 0, "error": 0, "timeout": 0}

    async def prefetch(self, ids: Iterable[bytes], *, rpc_up: bool, at: ReadAt | None) -> None:
        """Resolve ids the mirror does not know, reading at `at` (None: not yet known what to read).

        At most one read per id per negative-cache TTL, and only as many as the read budget grants; the
        rest stay unknown this time and are NOT cached (a later batch may resolve them). Never raises:
        an id that could not be read is simply unknown (→ `unknown_device`, never accepted)."""
        now = self.clock()
        unknown = [
            d
            for d in dict.fromkeys(ids)
            if self.mirror.lookup(d) is None and not self.negative.contains(d, now)
        ]
        if not unknown:
            return
        if not rpc_up:
            metrics.REGISTRY_ONDEMAND_SKIPPED.labels(why="rpc_down").inc(len(unknown))
            return
        if at is None:
            return
        block_id, floor = at
        todo = unknown[: self.read_budget.take(len(unknown), now)]
        if len(unknown) > len(todo):
            metrics.REGISTRY_ONDEMAND_SKIPPED.labels(why="over_budget").inc(len(unknown) - len(todo))
        if not todo:
            return
        tasks = [asyncio.create_task(self._read(d, block_id)) for d in todo]
        done, pending = await asyncio.wait(tasks, timeout=self.timeout_s)
        # Reads still running are left to finish, NOT cancelled (the module's docstring says why).
        for t in pending:
            self._abandoned.add(t)
            t.add_done_callback(self._abandoned.discard)
        for device_id, task in zip(todo, tasks, strict=True):
            result = self._outcome(task, task in done)
            self.reads[result] += 1
            metrics.REGISTRY_ONDEMAND_READS.labels(result=result).inc()
            if result == "absent":
                self.negative.add(device_id, now)
            elif result == "found" and (rec := task.result()) is not None:
                self.mirror.resolved[device_id] = (rec, floor)
        metrics.REGISTRY_NEGATIVE_CACHE_IDS.set(len(self.negative))

    async def _read(self, device_id: bytes, block_id: Any) -> DeviceRecord | None:
        async with self._slots:
            return await self.client.get_device(device_id, block_identifier=block_id)

    def _outcome(self, task: asyncio.Task[DeviceRecord | None], finished: bool) -> str:
        if not finished or task.cancelled():
            if not finished:  # its late answer or error is not ours to read any more
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            # A read that does not answer in time is the RPC failing too: stop reading until a sync
            # succeeds, and show it (`depin_chain_rpc_up` 0, `/readyz` "chain").
            self.on_failure(TimeoutError(f"on-demand registry read timed out after {self.timeout_s:g} s"))
            return "timeout"
        exc = task.exception()
        if exc is not None:
            self.on_failure(exc)  # stop reading until a sync succeeds again
            return "error"
        return "found" if task.result() is not None else "absent"
