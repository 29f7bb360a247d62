"""The service's mirror of the on-chain DeviceRegistry: events folded into memory and PostgreSQL.

The consumer never calls the chain per message: it looks devices up in this mirror. The follower
replays events from the deployment block in ranges, then follows new blocks up to latest − N
confirmations, persisting the mirror and a (block, hash) checkpoint so a restart resumes where it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from devices.chain import RegistryClient
from ingest import metrics
from ingest.adapters.store import Store
from ingest.core.registry_fold import apply_events
from ingest.model import DeviceRecord

log = logging.getLogger(__name__)

CURSOR = "registry"


class RegistryMirror:
    def __init__(self) -> None:
        self.devices: dict[bytes, DeviceRecord] = {}
        self.block = -1

    def lookup(self, device_id: bytes) -> DeviceRecord | None:
        return self.devices.get(device_id)


class RegistryFollower:
    def __init__(
        self,
        client: RegistryClient,
        store: Store,
        mirror: RegistryMirror,
        *,
        start_block: int,
        confirmations: int = 0,
        poll_s: float = 2.0,
        chunk_blocks: int = 2000,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.mirror = mirror
        self.start_block = start_block
        self.confirmations = confirmations
        self.poll_s = poll_s
        self.chunk_blocks = chunk_blocks
        self.progress = progress
        self.healthy = False

    async def load(self) -> None:
        """Start from the persisted mirror and checkpoint, so a restart does not replay from genesis."""
        for rec in await self.store.load_devices():
            self.mirror.devices[rec.device_id] = rec
        cursor = await self.store.get_cursor(CURSOR)
        self.mirror.block = cursor[0] if cursor else self.start_block - 1
        metrics.REGISTRY_DEVICES.set(len(self.mirror.devices))

    async def sync_once(self) -> int:
        """Fold every event up to the confirmed head; returns the number of events applied."""
        w3 = self.client.w3
        head = await w3.eth.block_number
        target = head - self.confirmations
        applied = 0
        frm = self.mirror.block + 1
        while frm <= target:
            to = min(frm + self.chunk_blocks - 1, target)
            events = await self.client.fetch_events(frm, to)
            changed = apply_events(self.mirror.devices, events)
            block = await w3.eth.get_block(to)
            await self.store.upsert_devices([self.mirror.devices[d] for d in changed], to)
            await self.store.set_cursor(CURSOR, to, bytes(block["hash"]))
            self.mirror.block = to
            applied += len(events)
            if self.progress is not None:
                self.progress(to, target)
            frm = to + 1
        metrics.REGISTRY_BLOCK.set(self.mirror.block)
        metrics.REGISTRY_LAG.set(max(0, head - self.mirror.block))
        metrics.REGISTRY_DEVICES.set(len(self.mirror.devices))
        return applied

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
                self.healthy = True
                metrics.CHAIN_UP.set(1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RPC down: keep serving known devices from the mirror
                self.healthy = False
                metrics.CHAIN_UP.set(0)
                log.warning("registry sync failed: %s", exc)
            await asyncio.sleep(self.poll_s)
