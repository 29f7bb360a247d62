"""The service's mirror of the on-chain DeviceRegistry: events folded into memory and PostgreSQL.

The consumer never calls the chain per message: it looks devices up in this mirror. The follower
replays events from the deployment block in ranges, then follows new blocks up to latest − N
confirmations (or the node's `finalized` block), persisting the mirror and a (block, hash) checkpoint so
a restart resumes where it was. The hardware-class table (HwClassSet events) is folded, persisted and
reorged the same way; the pipeline judges with `RegistryMirror.classes`.

Reorgs. Every sync first checks that the newest checkpoint's hash is still canonical. If not, it walks
back a ring of recent in-memory checkpoints to the newest one the chain still agrees with; each
checkpoint carries the undo record of its range (the prior state of the ids it changed), so the orphaned
ranges are taken back exactly and the forward scan re-folds from the agreed block. When the ring cannot
reach an agreed block (a reorg deeper than the ring, or the checkpoint was loaded from the database after
a restart), the mirror is rebuilt by replaying every event from the deployment block — the same code path
as the first start, so correct by construction, and at a registry's scale (one event per registration or
change) a few seconds of eth_getLogs. Memory and database change only after the new state is complete,
so a failure half-way leaves the old state and the same reorg is handled again at the next poll.

Unknown ids. `prefetch(ids)` (the consumer's hook, called before a batch is judged) resolves ids the
mirror does not hold with at most one contract read per id per negative-cache TTL, a token-bucket read
budget (over any T seconds at most `prefetch_budget + prefetch_rate_s × T` reads), bounded concurrency
and a time limit; reads stop while the RPC is down (those ids stay unknown →
`unknown_device`, never accepted). Found devices go to an overlay that the event fold supersedes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import aiohttp
import asyncpg
from web3 import AsyncHTTPProvider
from web3.exceptions import BlockNotFound
from web3.types import RPCEndpoint

from devices.chain import RegistryClient
from devices.protocol.hwclass import HwClass, from_registry
from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import (
    ClassUndo,
    HwClassInfo,
    Position,
    Undo,
    apply_events,
    apply_hw_class_events,
    confirmed_height,
    rollback,
    rollback_hw_classes,
)
from ingest import metrics
from ingest.adapters.store import MirrorStore
from ingest.core.negative_cache import NegativeCache, ReadBudget

log = logging.getLogger(__name__)

CURSOR = "registry"
# For the service's chain provider: web3 validates every eth_call against eth_chainId, which uncached
# triples the RPC calls an on-demand read costs; the chain id never changes under a running service.
# No validation threshold: web3 would look it up by briefly switching caching off, which races between
# concurrent requests (caching then stays off for good).
PROVIDER_OPTIONS: dict[str, Any] = {
    "cache_allowed_requests": True,
    "cacheable_requests": {RPCEndpoint("eth_chainId")},
    "request_cache_validation_threshold": None,
}
HeadMode = Literal["latest", "finalized"]


def chain_provider(url: str, timeout_s: float) -> AsyncHTTPProvider:
    """The service's provider: every request ends after `timeout_s` (a hung RPC counts as down instead
    of stalling a sync for web3's default 30 s), and web3's own retries are off (they would multiply
    the timeout; the follower and the epoch scheduler retry on their own schedule)."""
    return AsyncHTTPProvider(
        url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)},
        exception_retry_configuration=None,
        **PROVIDER_OPTIONS,
    )


class RegistryMirror:
    def __init__(self) -> None:
        self.devices: dict[bytes, DeviceRecord] = {}
        # The hardware-class table as on chain (HwClassSet events), disabled classes included.
        self.hw_classes: dict[int, HwClassInfo] = {}
        # What the pipeline judges with, derived from hw_classes once their rows are persisted. Updated
        # in place, never replaced: the consumer holds a read-only view of this very dict
        # (`classes_view`), so a class change applies from the next batch on.
        self.classes: dict[int, HwClass] = {}
        self.block = -1
        # Records read on demand for ids the event fold has not reached, with the block up to which the
        # read is known to be at least as new. Dropped once the fold has passed that block: from then on
        # the fold holds the truth, present or not (an overlay entry from an orphaned fork dies with it).
        self.resolved: dict[bytes, tuple[DeviceRecord, int]] = {}

    def lookup(self, device_id: bytes) -> DeviceRecord | None:
        rec = self.devices.get(device_id)
        if rec is None and (hit := self.resolved.get(device_id)) is not None:
            return hit[0]
        return rec

    def classes_view(self) -> Mapping[int, HwClass]:
        return MappingProxyType(self.classes)

    def refresh_classes(self, changed: Iterable[int]) -> None:
        """Bring the pipeline's classes in line with hw_classes for `changed` ids. A disabled class is
        kept: on chain "disabled" only stops new registrations, its devices keep being judged."""
        for class_id in changed:
            info = self.hw_classes.get(class_id)
            if info is None:
                self.classes.pop(class_id, None)
            else:
                self.classes[class_id] = from_registry(info.id, info.name, info.max_speed_kmh, info.h3_res)

    def prune_resolved(self) -> None:
        if self.resolved:
            self.resolved = {d: hit for d, hit in self.resolved.items() if hit[1] > self.block}


@dataclass
class Checkpoint:
    """A folded range ending at `block`. `undo` (devices) and `class_undo` (hardware classes) restore
    the state before the range; None when that state is unknown here (the checkpoint loaded from the
    database at start)."""

    block: int
    block_hash: bytes
    undo: Undo | None
    class_undo: ClassUndo | None = None


@dataclass
class _FoldState:
    """What a scan folds into: the live mirror's dicts, or fresh ones for a rebuild."""

    devices: dict[bytes, DeviceRecord]
    applied: dict[bytes, Position]
    classes: dict[int, HwClassInfo]
    applied_classes: dict[int, Position]


class ReorgDuringScan(Exception):
    """The chain changed under a range being scanned; nothing was applied, the next poll re-checks."""


class RegistryFollower:
    def __init__(
        self,
        client: RegistryClient,
        store: MirrorStore,
        mirror: RegistryMirror,
        *,
        start_block: int,
        confirmations: int = 0,
        head: HeadMode = "latest",
        poll_s: float = 2.0,
        chunk_blocks: int = 2000,
        reorg_window: int = 128,
        negative_ttl_s: float = 60.0,
        negative_max: int = 100_000,
        prefetch_budget: int = 50,
        prefetch_rate_s: float = 20.0,
        prefetch_concurrency: int = 8,
        prefetch_timeout_s: float = 2.0,
        progress: Callable[[int, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.store = store
        self.mirror = mirror
        self.start_block = start_block
        self.confirmations = confirmations
        self.head_mode: HeadMode = head
        self.poll_s = poll_s
        self.chunk_blocks = chunk_blocks
        self.progress = progress
        self.clock = clock
        self.applied: dict[bytes, Position] = {}  # id → position of the last event folded into it
        self.applied_classes: dict[int, Position] = {}  # the same for hardware classes
        self.checkpoints: deque[Checkpoint] = deque(maxlen=max(1, reorg_window))
        self.negative = NegativeCache(negative_ttl_s, negative_max)
        self.read_budget = ReadBudget(prefetch_rate_s, prefetch_budget)
        self.prefetch_timeout_s = prefetch_timeout_s
        self._read_slots = asyncio.Semaphore(prefetch_concurrency)
        self._abandoned: set[asyncio.Task[DeviceRecord | None]] = set()  # timed-out reads, still running
        self.healthy = False  # the last sync succeeded
        # monotonic times for readiness: when following started and the last sync (or replayed range)
        # that succeeded; a sync hanging on a slow RPC shows as a growing gap (ingest/core/readiness.py)
        self.watch_since = time.monotonic()
        self.last_ok: float | None = None
        self.rpc_up = True  # no RPC failure since the last successful sync (prefetch reads stop if False)
        self.last_error: str | None = None
        self.head: int | None = None  # chain head and confirmed target seen by the last sync
        self.target: int | None = None
        self.sync_failures = 0
        self.reorgs: dict[str, int] = {"undo": 0, "rebuild": 0}
        self.reads: dict[str, int] = {"found": 0, "absent": 0, "error": 0, "timeout": 0}

    async def load(self) -> None:
        """Start from the persisted mirror and checkpoint, so a restart does not replay from genesis."""
        for rec in await self.store.load_devices():
            self.mirror.devices[rec.device_id] = rec
        for info in await self.store.load_hw_classes():
            self.mirror.hw_classes[info.id] = info
        self.mirror.refresh_classes(self.mirror.hw_classes)
        cursor = await self.store.get_cursor(CURSOR)
        if cursor is not None and not self.mirror.hw_classes:
            # A mirror persisted before hardware classes were followed (the contract's constructor
            # always sets some): replay from the deployment block, over the persisted devices.
            log.warning("registry: no hardware classes persisted; replaying events from the deployment block")
            cursor = None
        if cursor is None:
            self.mirror.block = self.start_block - 1
        else:
            self.mirror.block = cursor[0]
            self.checkpoints.append(Checkpoint(cursor[0], cursor[1], None))
        metrics.REGISTRY_DEVICES.set(len(self.mirror.devices))

    # --- following ----------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RPC down: keep serving known devices from the mirror
                log.warning("registry sync failed: %s", exc)
            await asyncio.sleep(self.poll_s)

    async def sync_once(self) -> int:
        """Handle a reorg if there was one, then fold every event up to the confirmed head; returns the
        number of events applied. Updates health and metrics; re-raises a failure after counting it."""
        started = time.monotonic()
        try:
            applied = await self._sync()
        except ReorgDuringScan as exc:
            log.info("registry: %s; re-checking at the next poll", exc)
            return 0
        except Exception as exc:
            self.sync_failures += 1
            metrics.REGISTRY_SYNC_FAILURES.inc()
            if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
                # The database failed, not the chain (which answered before the write): the chain
                # stays up; `/readyz` names the database.
                self.healthy = False
                self.last_error = f"database: {type(exc).__name__}: {exc}"[:300]
                self.last_ok = time.monotonic()
            else:
                self._rpc_failed(exc)
            raise
        self.healthy = self.rpc_up = True
        self.last_error = None
        self.last_ok = time.monotonic()
        metrics.CHAIN_UP.set(1)
        metrics.CHAIN_RPC_SECONDS.set(self.last_ok - started)
        return applied

    def _rpc_failed(self, exc: BaseException) -> None:
        if isinstance(exc, TimeoutError):  # aiohttp's request timeout (DEPIN_CHAIN_RPC_TIMEOUT_S) too
            metrics.CHAIN_RPC_TIMEOUTS.inc()
        self.healthy = self.rpc_up = False
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        metrics.CHAIN_UP.set(0)

    async def _sync(self) -> int:
        w3 = self.client.w3
        head = await w3.eth.block_number
        if self.head_mode == "finalized":
            target = int((await w3.eth.get_block("finalized"))["number"])
        else:
            target = confirmed_height(head, self.confirmations)
        await self._handle_reorg(target)
        applied = 0
        frm = self.mirror.block + 1
        replaying = target - frm + 1 > self.chunk_blocks
        while frm <= target:
            to = min(frm + self.chunk_blocks - 1, target)
            applied += await self._fold_and_persist(frm, to)
            if self.progress is not None:
                self.progress(to, target)
            if replaying:
                log.info(
                    "registry replay: block %d of %d, %d events so far, %d devices",
                    to, target, applied, len(self.mirror.devices),
                )  # fmt: skip
            frm = to + 1
        self.mirror.prune_resolved()
        self.head, self.target = head, target
        metrics.REGISTRY_BLOCK.set(self.mirror.block)
        metrics.REGISTRY_LAG.set(max(0, head - self.mirror.block))
        metrics.REGISTRY_DEVICES.set(len(self.mirror.devices))
        return applied

    async def _scan(
        self, state: _FoldState, frm: int, to: int
    ) -> tuple[Checkpoint, set[bytes], set[int], int]:
        """Fold the events of [frm, to] into `state`; returns the range's checkpoint (with undo), the
        changed device and class ids and the event count. The hash of `to` is read BEFORE the logs: a
        reorg after that read leaves a checkpoint the next sync finds orphaned, so a mixed view is
        never trusted."""
        block_hash = bytes((await self.client.w3.eth.get_block(to))["hash"])
        events = await self.client.fetch_events(frm, to)
        if any(e.block_number == to and e.block_hash != block_hash for e in events):
            raise ReorgDuringScan(f"block {to} changed while its logs were read")
        undo: Undo = {}
        class_undo: ClassUndo = {}
        changed = apply_events(state.devices, events, state.applied, undo)
        changed_classes = apply_hw_class_events(state.classes, events, state.applied_classes, class_undo)
        return Checkpoint(to, block_hash, undo, class_undo), changed, changed_classes, len(events)

    async def _fold_and_persist(self, frm: int, to: int) -> int:
        devices, classes = self.mirror.devices, self.mirror.hw_classes
        state = _FoldState(devices, self.applied, classes, self.applied_classes)
        checkpoint, changed, changed_classes, count = await self._scan(state, frm, to)
        try:
            await self.store.save_mirror(
                CURSOR,
                to,
                checkpoint.block_hash,
                [devices[d] for d in changed],
                classes=[classes[c] for c in changed_classes],
            )
        except BaseException:
            # Memory never runs ahead of the checkpoint: the same range is folded again next time.
            rollback(devices, self.applied, checkpoint.undo or {})
            rollback_hw_classes(classes, self.applied_classes, checkpoint.class_undo or {})
            raise
        self.mirror.refresh_classes(changed_classes)
        self.mirror.block = to
        self.checkpoints.append(checkpoint)
        self.last_ok = time.monotonic()  # a long replay makes progress: not a hung RPC
        return count

    # --- reorgs ---------------------------------------------------------------------------------------

    async def _canonical_hash(self, block: int) -> bytes | None:
        try:
            return bytes((await self.client.w3.eth.get_block(block))["hash"])
        except BlockNotFound:
            return None  # the chain is now shorter than the checkpoint

    async def _handle_reorg(self, target: int) -> None:
        if not self.checkpoints:
            return
        newest = self.checkpoints[-1]
        if await self._canonical_hash(newest.block) == newest.block_hash:
            return
        agreed = len(self.checkpoints) - 2
        while agreed >= 0:
            cp = self.checkpoints[agreed]
            if await self._canonical_hash(cp.block) == cp.block_hash:
                break
            agreed -= 1
        orphaned = list(self.checkpoints)[agreed + 1 :]
        if agreed < 0 or any(cp.undo is None for cp in orphaned):
            log.warning(
                "registry: checkpoint %d is no longer canonical; rebuilding from events", newest.block
            )
            await self._rebuild(target)
            self.reorgs["rebuild"] += 1
            metrics.REGISTRY_REORGS.labels(recovery="rebuild").inc()
            return
        base = self.checkpoints[agreed]
        # Merge the orphaned ranges' undo newest → oldest: each id gets its state before the oldest range.
        merged: Undo = {}
        merged_classes: ClassUndo = {}
        for cp in reversed(orphaned):
            merged.update(cp.undo or {})
            merged_classes.update(cp.class_undo or {})
        restored = {d: rec for d, (rec, _) in merged.items()}
        restored_classes = {c: info for c, (info, _) in merged_classes.items()}
        await self.store.save_mirror(
            CURSOR,
            base.block,
            base.block_hash,
            upserts=[rec for rec in restored.values() if rec is not None],
            deletes=[d for d, rec in restored.items() if rec is None],
            classes=[info for info in restored_classes.values() if info is not None],
            class_deletes=[c for c, info in restored_classes.items() if info is None],
        )
        rollback(self.mirror.devices, self.applied, merged)
        rollback_hw_classes(self.mirror.hw_classes, self.applied_classes, merged_classes)
        self.mirror.refresh_classes(merged_classes)
        for _ in orphaned:
            self.checkpoints.pop()
        self.mirror.block = base.block
        self.mirror.resolved.clear()
        self.reorgs["undo"] += 1
        metrics.REGISTRY_REORGS.labels(recovery="undo").inc()
        log.warning(
            "registry: reorg below block %d; took back %d ranges (%d devices) to block %d and re-scanning",
            newest.block, len(orphaned), len(merged), base.block,
        )  # fmt: skip

    async def _rebuild(self, target: int) -> None:
        """Replay every event from the deployment block into a fresh state, then swap it in."""
        if target < self.start_block:
            raise RuntimeError(f"chain target {target} is below the deployment block {self.start_block}")
        state = _FoldState({}, {}, {}, {})
        devices, classes = state.devices, state.classes
        ring: deque[Checkpoint] = deque(maxlen=self.checkpoints.maxlen)
        frm = self.start_block
        while frm <= target:
            to = min(frm + self.chunk_blocks - 1, target)
            checkpoint, _, _, _ = await self._scan(state, frm, to)
            ring.append(checkpoint)
            if self.progress is not None:
                self.progress(to, target)
            frm = to + 1
        last = ring[-1]
        stale = [r.device_id for r in await self.store.load_devices() if r.device_id not in devices]
        stale_classes = [c.id for c in await self.store.load_hw_classes() if c.id not in classes]
        await self.store.save_mirror(
            CURSOR,
            last.block,
            last.block_hash,
            list(devices.values()),
            stale,
            classes=list(classes.values()),
            class_deletes=stale_classes,
        )
        self.mirror.devices = devices
        gone = set(self.mirror.hw_classes) - set(classes)
        self.mirror.hw_classes = classes
        self.mirror.refresh_classes(gone | set(classes))
        self.mirror.block = last.block
        self.mirror.resolved.clear()
        self.applied = state.applied
        self.applied_classes = state.applied_classes
        self.checkpoints = ring
        log.warning(
            "registry rebuilt to block %d: %d devices, %d removed", last.block, len(devices), len(stale)
        )

    # --- unknown ids ----------------------------------------------------------------------------------

    async def prefetch(self, ids: Iterable[bytes]) -> None:
        """Resolve ids the mirror does not know before a batch is judged (the consumer's hook).

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
        if not self.rpc_up:
            metrics.REGISTRY_ONDEMAND_SKIPPED.labels(why="rpc_down").inc(len(unknown))
            return
        at = self._read_at()
        if at is None:
            return
        block_id, floor = at
        todo = unknown[: self.read_budget.take(len(unknown), now)]
        if len(unknown) > len(todo):
            metrics.REGISTRY_ONDEMAND_SKIPPED.labels(why="over_budget").inc(len(unknown) - len(todo))
        if not todo:
            return
        tasks = [asyncio.create_task(self._read(d, block_id)) for d in todo]
        done, pending = await asyncio.wait(tasks, timeout=self.prefetch_timeout_s)
        # Reads still running are left to finish in the background (each ends within the provider's
        # request timeout) and their answers dropped, NOT cancelled: web3 8 takes a threading.Lock for
        # its session cache in an executor thread, and a request cancelled while waiting for it leaves
        # the lock taken for good, so every later chain call (and the interpreter's exit) would hang.
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

    def _read_at(self) -> tuple[Any, int] | None:
        """Which state to read (the same trust as the follower: confirmed blocks only) and the block the
        fold must pass before the read is superseded. None before the first sync when N > 0."""
        if self.head_mode == "finalized":
            return "finalized", self.target if self.target is not None else -1
        if self.confirmations == 0:
            return "latest", self.head if self.head is not None else -1
        if self.target is None:
            return None
        return self.target, self.target

    async def _read(self, device_id: bytes, block_id: Any) -> DeviceRecord | None:
        async with self._read_slots:
            return await self.client.get_device(device_id, block_identifier=block_id)

    def _outcome(self, task: asyncio.Task[DeviceRecord | None], finished: bool) -> str:
        if not finished or task.cancelled():
            if not finished:  # its late answer or error is not ours to read any more
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            # A read that does not answer in time is the RPC failing too: stop reading until a sync
            # succeeds, and show it (`depin_chain_rpc_up` 0, `/readyz` "chain").
            timeout = self.prefetch_timeout_s
            self._rpc_failed(TimeoutError(f"on-demand registry read timed out after {timeout:g} s"))
            return "timeout"
        exc = task.exception()
        if exc is not None:
            self._rpc_failed(exc)  # stop reading until a sync succeeds again
            return "error"
        return "found" if task.result() is not None else "absent"
