"""Rejection rows' retention, run by the `consume` part of `depin run`: every
`DEPIN_REJECTIONS_PRUNE_INTERVAL_S`, delete the rows older than `DEPIN_REJECTIONS_RETENTION_DAYS` and
each device's unsigned rows beyond its newest `DEPIN_REJECTIONS_UNSIGNED_KEEP` (in batches;
`depin_rejections_pruned_total{why}`). With N workers each runs it; the DELETEs are idempotent."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ingest import metrics
from ingest.adapters.store import IngestStore
from ingest.core.rejection_budget import UNSIGNED

log = logging.getLogger(__name__)


async def prune_once(
    store: IngestStore, retention_ms: int, unsigned_keep: int, now_ms: int
) -> tuple[int, int]:
    expired, trimmed = await store.prune_rejections(now_ms - retention_ms, sorted(UNSIGNED), unsigned_keep)
    metrics.REJECTIONS_PRUNED.labels(why="expired").inc(expired)
    metrics.REJECTIONS_PRUNED.labels(why="trimmed").inc(trimmed)
    if expired or trimmed:
        log.info("rejections pruned: %d expired, %d unsigned over a device's cap", expired, trimmed)
    return expired, trimmed


async def run_retention(
    store: IngestStore,
    retention_ms: int,
    unsigned_keep: int,
    interval_s: float,
    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> None:
    """Prune now and every `interval_s` until cancelled. A failure (the database away, a statement
    timeout) is logged and retried next time: pruning late never loses data, stopping the part would."""
    while True:
        try:
            await prune_once(store, retention_ms, unsigned_keep, clock())
        except Exception as exc:
            log.warning("pruning rejections failed (%r); retrying in %.0f s", exc, interval_s)
        await asyncio.sleep(interval_s)
