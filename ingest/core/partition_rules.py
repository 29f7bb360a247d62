"""Which daily `readings` partitions the maintenance loop creates ahead and which it may drop.

A day d (UTC, `ms // DAY_MS`) is the partition covering [d·DAY_MS, (d+1)·DAY_MS). It may be dropped
only when it lies wholly before BOTH the retention cut-off (now − retention) and the sealed watermark
(`epoch_seal.sealed_until`): readings of an epoch not yet closed are what its rewards are computed
from, so no retention setting may remove them. Retention 0 keeps everything.
"""

from __future__ import annotations

from collections.abc import Iterable

DAY_MS = 86_400_000


def days_ahead(now_ms: int, ahead_days: int) -> range:
    """Today and the next `ahead_days` days: the partitions to have before a batch needs them."""
    today = now_ms // DAY_MS
    return range(today, today + ahead_days + 1)


def drop_before_ms(now_ms: int, retention_days: int, sealed_until_ms: int | None) -> int | None:
    """The instant before which whole partitions may go, or None to drop nothing (retention 0, or no
    epoch sealed yet: `sealed_until_ms` None stands for the initial '-infinity')."""
    if retention_days <= 0 or sealed_until_ms is None:
        return None
    return min(now_ms - retention_days * DAY_MS, sealed_until_ms)


def droppable_days(
    days: Iterable[int], now_ms: int, retention_days: int, sealed_until_ms: int | None
) -> list[int]:
    """The days among `days` whose partition ends at or before `drop_before_ms`, oldest first."""
    before = drop_before_ms(now_ms, retention_days, sealed_until_ms)
    if before is None:
        return []
    return sorted(d for d in set(days) if (d + 1) * DAY_MS <= before)


def compactable_days(
    days: Iterable[int], now_ms: int, after_days: int, compacted: Iterable[int]
) -> list[int]:
    """The days among `days` over for at least `after_days` whose partition's indexes were not rebuilt
    yet, oldest first; `after_days` 0 turns compaction off. Waiting past the day leaves the late
    readings (DEPIN_MAX_LATENESS_MS) time to arrive first."""
    if after_days <= 0:
        return []
    done = set(compacted)
    return sorted(d for d in set(days) if (d + 1 + after_days) * DAY_MS <= now_ms and d not in done)
