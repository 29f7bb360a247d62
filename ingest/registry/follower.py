"""The registry follower: DeviceRegistry events folded into the mirror and PostgreSQL.

The follower replays events from the deployment block in ranges, then follows new blocks up to
latest − N confirmations (or the node's `finalized` block), persisting the mirror and a (block, hash)
checkpoint so a restart resumes where it was. The hardware-class table (HwClassSet events) is folded,
persisted and reorged the same way.

Reorgs. Every sync first checks that the newest checkpoint's hash is still canonical. If not, it walks
back a ring of recent in-memory checkpoints to the newest one the chain still agrees with; each
checkpoint carries the undo record of its range (the prior state of the ids it changed), so the orphaned
ranges are taken back exactly and the forward scan re-folds from the agreed block. When the ring cannot
reach an agreed block (a reorg deeper than the ring, or the checkpoint was loaded from the database after
a restart), the mirror is rebuilt by replaying every event from the deployment block — the same code path
as the first start, so correct by construction, and at a registry's scale (one event per registration or
change) a few seconds of eth_getLogs. Memory and database change only after the new state is complete,
so a failure half-way leaves the old state and the same reorg is handled again at the next poll.

Unknown ids: `prefetch` hands them to `OnDemandReads` (`reads.py`), reading at the same confirmed state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import asyncpg
from web3.exceptions import BlockNotFound

from devices.chain.registry import RegistryClient
from devices.errors import ChainError
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
from ingest.registry.mirror import RegistryMirror
from ingest.registry.reads import OnDemandReads, ReadAt

log = logging.getLogger(__name__)

CURSOR = "registry"
HeadMode = Literal["latest", "finalized"]


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


class ReorgDuringScan(ChainError):
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
        self.ondemand = OnDemandReads(
            client,
            mirror,
            self._rpc_failed,
            negative_ttl_s=negative_ttl_s,
            negative_max=negative_max,
            budget=prefetch_budget,
            rate_s=prefetch_rate_s,
            concurrency=prefetch_concurrency,
            timeout_s=prefetch_timeout_s,
            clock=clock,
        )
        # One sync at a time: the start-up sync may still run in the background when `run()` starts.
        self._sync_lock = asyncio.Lock()
        self.first_sync_task: asyncio.Task[int] | None = None  # a start-up sync that outlived its wait
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

    @property
    def reads(self) -> dict[str, int]:
        """On-demand reads by result: found, absent, error, timeout."""
        return self.ondemand.reads

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

    async def first_sync(self, timeout_s: float) -> int:
        """The start-up sync (`depin run` catches the mirror up before consuming): `sync_once`, waited
        for up to `timeout_s`. One still running then is NOT cancelled (cancelling a web3 8 request can
        leave its session-cache lock held for good: see `reads.py`); it goes on in the background as
        `first_sync_task` (`run()`'s first sync waits for it), the chain counts as down meanwhile
        (`/readyz` "chain", `depin_chain_rpc_up` 0), and TimeoutError tells the caller to go on with
        the persisted mirror."""
        task = asyncio.create_task(self.sync_once(), name="registry-first-sync")
        done, _ = await asyncio.wait([task], timeout=timeout_s)
        if task in done:
            return task.result()
        self.first_sync_task = task
        task.add_done_callback(self._first_sync_ended)
        why = f"the first registry sync is still running after {timeout_s:g} s"
        self._chain_down(why)
        raise TimeoutError(why)

    def _first_sync_ended(self, task: asyncio.Task[int]) -> None:
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:  # counted and shown by sync_once already
            log.warning("registry: the first sync failed in the background: %s", exc)
        else:
            log.info(
                "registry: the first sync is done: %d devices at block %d",
                len(self.mirror.devices),
                self.mirror.block,
            )

    async def sync_once(self) -> int:
        """Handle a reorg if there was one, then fold every event up to the confirmed head; returns the
        number of events applied. Updates health and metrics; re-raises a failure after counting it."""
        async with self._sync_lock:
            return await self._sync_counted()

    async def _sync_counted(self) -> int:
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
        self._chain_down(f"{type(exc).__name__}: {exc}")

    def _chain_down(self, why: str) -> None:
        """Not ready on the chain, and no on-demand reads, until a sync succeeds."""
        self.healthy = self.rpc_up = False
        self.last_error = why[:300]
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
            raise ChainError(f"chain target {target} is below the deployment block {self.start_block}")
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
        """The consumer's hook before a batch is judged: read ids the mirror does not know (`reads.py`)."""
        await self.ondemand.prefetch(ids, rpc_up=self.rpc_up, at=self._read_at())

    def _read_at(self) -> ReadAt | None:
        """Which state to read (the same trust as the follower: confirmed blocks only) and the block the
        fold must pass before the read is superseded. None before the first sync when N > 0."""
        if self.head_mode == "finalized":
            return "finalized", self.target if self.target is not None else -1
        if self.confirmations == 0:
            return "latest", self.head if self.head is not None else -1
        if self.target is None:
            return None
        return self.target, self.target
