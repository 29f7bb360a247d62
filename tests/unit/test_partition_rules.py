"""Which readings partitions the upkeep creates ahead and may drop (ingest/core/partition_rules.py):
a day goes only when it ends before BOTH now − retention and the sealed watermark."""

from __future__ import annotations

import pytest

from ingest.core.partition_rules import DAY_MS, compactable_days, days_ahead, drop_before_ms, droppable_days

NOW = 20_000 * DAY_MS + 3_600_000  # day 20000, 01:00 UTC
DAYS = [19_980, 19_989, 19_990, 19_992, 19_993, 19_999, 20_000, 20_001]


def test_days_ahead_are_today_and_the_next_n() -> None:
    assert list(days_ahead(NOW, 2)) == [20_000, 20_001, 20_002]
    assert list(days_ahead(NOW, 0)) == [20_000]


@pytest.mark.parametrize(
    ("retention_days", "sealed_until_ms", "dropped"),
    [
        (0, NOW, []),  # 0 keeps forever, whatever is sealed
        (7, None, []),  # nothing sealed yet ('-infinity'): every epoch may still need its readings
        (7, NOW, [19_980, 19_989, 19_990, 19_992]),  # cut-off NOW − 7 d: day 19993 ends after it
        (7, 19_990 * DAY_MS, [19_980, 19_989]),  # sealed earlier than the retention: the seal rules
        (7, 19_990 * DAY_MS + 1, [19_980, 19_989]),  # day 19990 only partly sealed: kept
        (7, 19_991 * DAY_MS, [19_980, 19_989, 19_990]),  # a partition ending exactly at the seal goes
        (7, 19_980 * DAY_MS, []),  # sealed before the oldest partition ends
        (1, NOW, [19_980, 19_989, 19_990, 19_992, 19_993]),  # cut-off day 19999 01:00: 19999 kept
        (15, NOW, [19_980]),  # cut-off day 19985 01:00
        (30, NOW, []),
        (365, NOW, []),
    ],
)
def test_droppable_days(retention_days: int, sealed_until_ms: int | None, dropped: list[int]) -> None:
    assert droppable_days(DAYS, NOW, retention_days, sealed_until_ms) == dropped


@pytest.mark.parametrize(
    ("retention_days", "sealed_until_ms", "before"),
    [
        (0, NOW, None),
        (3, None, None),
        (3, NOW, NOW - 3 * DAY_MS),  # retention is the earlier bound
        (3, NOW - 5 * DAY_MS, NOW - 5 * DAY_MS),  # the seal is
    ],
)
def test_drop_before_ms_is_the_earlier_bound(
    retention_days: int, sealed_until_ms: int | None, before: int | None
) -> None:
    assert drop_before_ms(NOW, retention_days, sealed_until_ms) == before


def test_compactable_days_are_over_long_enough_and_not_done() -> None:
    today = NOW // DAY_MS
    days = [today - 3, today - 2, today - 1, today, today + 1]
    assert compactable_days(days, NOW, 1, []) == [today - 3, today - 2]  # yesterday is over < 1 day
    assert compactable_days(days, NOW, 1, [today - 3]) == [today - 2]
    assert compactable_days(days, NOW, 3, []) == []
    assert compactable_days(days, (today - 1) * DAY_MS, 0, []) == []  # 0 = never
    assert compactable_days(days, today * DAY_MS, 1, []) == [today - 3, today - 2]  # day end exactly
