"""Hourly rollups (migration 014, docs/DESIGN.md §8 "Hourly rollups"), the pure part: which hours a
batch dirties, which dirty hours the refresher takes, when a query may be answered from the rollups,
and the res-7 block ranges a place is.

A reading's block is its res-7 parent cell, or its own cell when stored coarser (`placescan.block_of`,
SQL `depin_cell7`). For res ≤ 7 the cell a reading is grouped at is a function of its block alone, and so is
whether it lies in a query cell of res ≤ 7 — unless some data is stored coarser than that query cell
(the raw path then tests positions against the hexagon, which blocks cannot): such queries stay raw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from devices.protocol.model import Reading
from ingest.core import h3cells
from ingest.core.placescan import BLOCK_RES
from ingest.core.readfilter import ReadingFilter

HOUR_MS = 3_600_000
ROLLUP_BUCKETS = frozenset({"hour", "day"})  # whole hours; minutes need the readings
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
COUNT_NAME = ""  # the rollup row counting every reading of (block, hour, kind): never a value name


def batch_hours(packets: Iterable[Sequence[Reading]]) -> list[int]:
    """The distinct UTC hours (start, ms) a batch's packets (their readings) write, oldest first: from
    each packet's first to its last reading (in time order: the decoder refuses others), so the work is
    per packet, not per reading."""
    spans = {(r[0].ts_ms // HOUR_MS, r[-1].ts_ms // HOUR_MS) for r in packets if r}
    hours: set[int] = set()
    for first, last in spans:
        hours.update(range(first, last + 1))
    return [h * HOUR_MS for h in sorted(hours)]


def due_hours(dirty: Sequence[tuple[int, int]], now_ms: int, limit: int) -> list[tuple[int, int]]:
    """The dirty (hour_ms, version) pairs to refresh now: hours that have ended, newest first (buyers
    ask for recent data most), at most `limit`. The open hour is left dirty: batches dirty it again
    within milliseconds, so refreshing it would be work thrown away; queries read it raw."""
    ended = [d for d in dirty if d[0] + HOUR_MS <= now_ms]
    return sorted(ended, reverse=True)[:limit]


def _place_ok(f: ReadingFilter, stored_res: Sequence[int]) -> bool:
    if f.device is not None or f.area is not None:
        return False
    if f.cell is None:
        return True
    own = h3cells.res_of(f.cell)
    return own <= BLOCK_RES and all(s >= own for s in stored_res)


def _hours_ok(f: ReadingFilter) -> bool:
    return f.start_ms % HOUR_MS == 0 and f.end_ms % HOUR_MS == 0 and f.start_ms < f.end_ms


def aggregate_eligible(
    f: ReadingFilter, *, res: int | None, by_device: bool, bucket: str, stored_res: Sequence[int]
) -> bool:
    """May `QueryStore.aggregates` answer from the rollups: hour or day buckets, not per device, `res`
    ≤ 7 (or none), no place or a cell of res ≤ 7 (no data coarser than it), whole hours."""
    return (
        bucket in ROLLUP_BUCKETS
        and not by_device
        and (res is None or 0 <= res <= BLOCK_RES)
        and _place_ok(f, stored_res)
        and _hours_ok(f)
    )


def usage_eligible(f: ReadingFilter, *, genesis_ms: int, length_ms: int, stored_res: Sequence[int]) -> bool:
    """May `QueryStore.usage` count from the rollups: the same place and hours rules, and epochs made of
    whole hours (every reading of an hour then lies in one epoch)."""
    return (
        genesis_ms % HOUR_MS == 0 and length_ms % HOUR_MS == 0 and _place_ok(f, stored_res) and _hours_ok(f)
    )


def block_ranges(cell: int | None) -> list[tuple[int, int]]:
    """Disjoint [lo, hi] ranges of blocks inside `cell` (res ≤ 7): its res-7 children, and for each
    resolution between the cell's and 7 its children there (the blocks of data stored that coarse).
    No cell: every block."""
    if cell is None:
        return [(INT64_MIN, INT64_MAX)]
    own = h3cells.res_of(cell)
    if own > BLOCK_RES:
        raise ValueError(f"a cell of res {own} is finer than a block")
    return [h3cells.child_range(cell, r) for r in range(own, BLOCK_RES + 1)]
