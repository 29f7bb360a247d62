"""Rejection rows' retention, run by the `consume` part of `depin run`: every
`DEPIN_REJECTIONS_PRUNE_INTERVAL_S`, delete the rows older than `DEPIN_REJECTIONS_RETENTION_DAYS` and
each device's unsigned rows beyond its newest `DEPIN_REJECTIONS_UNSIGNED_KEEP` (in batches;
`depin_rejections_pruned_total{why}`). The same task keeps the readings partitions
(`maintain_partitions`): today's and the next `DEPIN_READINGS_PARTITIONS_AHEAD_DAYS` are created ahead,
whole ones past `DEPIN_READINGS_RETENTION_DAYS` and sealed are dropped (with their hourly rollup rows),
and days over for `DEPIN_READINGS_COMPACT_AFTER_DAYS` get their indexes rebuilt packed, once
(`compact_partitions`; `depin_readings_partitions_total{action}`). The `device_state` rows of devices
silent for `DEPIN_DEVICE_STATE_IDLE_DAYS` go too (`prune_device_state`). With N workers each runs it; every
step is idempotent."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ingest import metrics
from ingest.adapters.store import IngestStore
from ingest.adapters.store.partitions import PartitionStore
from ingest.core.partition_rules import compactable_days, days_ahead, drop_before_ms, droppable_days
from ingest.core.rejection_budget import UNSIGNED
from ingest.settings import ConsumerConfig

log = logging.getLogger(__name__)

# The state pruner scans `device_state` (its time column is not indexed, to keep the batches' rewrites
# HOT): at start, then hourly, not every interval. Idle is counted in days: an hour late is nothing.
DEVICE_STATE_PRUNE_EVERY_S = 3600.0


async def prune_once(
    store: IngestStore, retention_ms: int, unsigned_keep: int, now_ms: int
) -> tuple[int, int]:
    expired, trimmed = await store.prune_rejections(now_ms - retention_ms, sorted(UNSIGNED), unsigned_keep)
    metrics.REJECTIONS_PRUNED.labels(why="expired").inc(expired)
    metrics.REJECTIONS_PRUNED.labels(why="trimmed").inc(trimmed)
    if expired or trimmed:
        log.info("rejections pruned: %d expired, %d unsigned over a device's cap", expired, trimmed)
    return expired, trimmed


async def prune_device_state(store: IngestStore, idle_ms: int, now_ms: int) -> int:
    """One pass: delete the stateful rules' rows of devices silent for `idle_ms` (0: none)."""
    if idle_ms <= 0:
        return 0
    deleted = await store.prune_device_state(now_ms - idle_ms)
    metrics.DEVICE_STATE_PRUNED.inc(deleted)
    if deleted:
        log.info("device state pruned: %d devices silent for %.0f days", deleted, idle_ms / 86_400_000)
    return deleted


async def maintain_partitions(
    parts: PartitionStore, ahead_days: int, retention_days: int, now_ms: int
) -> tuple[list[str], list[str]]:
    """One pass: create the partitions ahead, drop the droppable ones; returns (created, dropped)."""
    created: list[str] = []
    dropped: list[str] = []
    if await parts.native():
        ahead = days_ahead(now_ms, ahead_days)
        created = await parts.create_days(ahead[0], ahead[-1])
        if retention_days > 0:
            days = await parts.partition_days()
            sealed = await parts.sealed_until_ms()
            for day in droppable_days(days, now_ms, retention_days, sealed):
                if await parts.drop_partition(days[day]):
                    dropped.append(days[day])
    else:  # TimescaleDB creates its chunks on insert; old ones go by the same rule
        before = drop_before_ms(now_ms, retention_days, await parts.sealed_until_ms())
        if before is not None:
            dropped = await parts.drop_chunks_before(before)
    metrics.READINGS_PARTITIONS.labels(action="created").inc(len(created))
    metrics.READINGS_PARTITIONS.labels(action="dropped").inc(len(dropped))
    if created:
        log.info("created readings partitions ahead: %s", ", ".join(created))
    for name in dropped:
        log.info("dropped readings partition %s (past %d days' retention and sealed)", name, retention_days)
    return created, dropped


async def compact_partitions(parts: PartitionStore, after_days: int, now_ms: int) -> list[str]:
    """One pass: rebuild the indexes of each native partition over for `after_days` and not yet rebuilt
    (docs/DESIGN.md §8: about a third smaller); returns the partitions rebuilt."""
    if not await parts.native():
        return []  # TimescaleDB compresses old chunks instead
    days = await parts.partition_days()
    done = await parts.compacted()
    compacted: list[str] = []
    for day in compactable_days(days, now_ms, after_days, (d for d, name in days.items() if name in done)):
        started = time.monotonic()
        if await parts.compact_partition(days[day]):
            compacted.append(days[day])
            metrics.READINGS_PARTITIONS.labels(action="compacted").inc()
            took = time.monotonic() - started
            log.info("rebuilt the indexes of readings partition %s in %.1f s", days[day], took)
    return compacted


async def run_retention(
    store: IngestStore,
    c: ConsumerConfig,
    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> None:
    """Prune and keep the partitions now and every `DEPIN_REJECTIONS_PRUNE_INTERVAL_S` until cancelled.
    A failure (the database away, a lock or statement timeout) is logged and retried next time: late
    upkeep never loses data, stopping the part would. Each step fails alone: one does not starve the other."""
    parts = PartitionStore(store.pool)
    interval_s = c.rejections_prune_interval_s
    state_due = 0.0
    while True:
        try:
            await prune_once(store, c.rejections_retention_ms, c.rejections_unsigned_keep, clock())
        except Exception as exc:
            log.warning("pruning rejections failed (%r); retrying in %.0f s", exc, interval_s)
        if time.monotonic() >= state_due:
            try:
                await prune_device_state(store, c.device_state_idle_ms, clock())
                state_due = time.monotonic() + DEVICE_STATE_PRUNE_EVERY_S
            except Exception as exc:
                log.warning("pruning device state failed (%r); retrying in %.0f s", exc, interval_s)
        try:
            await maintain_partitions(
                parts, c.readings_partitions_ahead_days, c.readings_retention_days, clock()
            )
        except Exception as exc:
            log.warning("readings partition upkeep failed (%r); retrying in %.0f s", exc, interval_s)
        try:
            await compact_partitions(parts, c.readings_compact_after_days, clock())
        except Exception as exc:
            log.warning("readings partition compaction failed (%r); retrying in %.0f s", exc, interval_s)
        await asyncio.sleep(interval_s)
