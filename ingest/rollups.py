"""The hourly rollups' refresher (docs/DESIGN.md §8 "Hourly rollups"), run by the `epochs` part of
`depin run`: every `DEPIN_ROLLUP_INTERVAL_S`, recompute each ended dirty hour from its readings
(`RollupStore.refresh`), newest first, and report how far behind it is. Batches dirty hours in their own
transactions (`IngestStore.write_batch`); queries read dirty hours raw, so a slow or stopped refresher
costs speed, never correctness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ingest import metrics
from ingest.adapters.store.rollups import RollupStore
from ingest.core.rollup_rules import due_hours

log = logging.getLogger(__name__)
PASS_LIMIT = 500  # hours per pass; a longer backlog continues without sleeping


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def refresh_once(store: RollupStore, now_ms: int, limit: int = PASS_LIMIT) -> tuple[int, bool]:
    """One pass over the due dirty hours. Returns (hours left clean, whether hours were left for the
    next pass). An hour that fails is logged and counted; the others go on."""
    dirty = await store.dirty()
    metrics.ROLLUP_DIRTY_HOURS.set(len(dirty))
    due = due_hours(dirty, now_ms, limit)
    cleaned = 0
    for hour_ms, _ in due:
        try:
            clean = await store.refresh(hour_ms)
        except Exception as exc:
            metrics.ROLLUP_ERRORS.inc()
            log.warning("rollup refresh of hour %d failed (%r); retried next pass", hour_ms, exc)
            continue
        metrics.ROLLUP_HOURS_REFRESHED.labels(result="clean" if clean else "redirtied").inc()
        cleaned += clean
    metrics.ROLLUP_LAG_SECONDS.set(await store.lag_s(now_ms))
    return cleaned, len(due) == limit


async def run_rollups(
    store: RollupStore, interval_s: float, clock: Callable[[], int] = _now_ms, limit: int = PASS_LIMIT
) -> None:
    """Refresh passes until cancelled. A failing pass (the database away) is logged and retried."""
    while True:
        more = False
        try:
            _, more = await refresh_once(store, clock(), limit)
        except Exception as exc:
            metrics.ROLLUP_ERRORS.inc()
            log.warning("rollup refresh pass failed (%r); retrying in %.0f s", exc, interval_s)
        await asyncio.sleep(0 if more else interval_s)
