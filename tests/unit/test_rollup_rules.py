"""ingest/core/rollup_rules.py: when a query may read the hourly rollups, the block ranges of a place
(checked against h3), which dirty hours a pass refreshes, the hours a batch dirties."""

from __future__ import annotations

import random

import h3
import pytest

from devices.protocol.model import Reading
from ingest.core import h3cells
from ingest.core.readfilter import parse_where
from ingest.core.rollup_rules import (
    HOUR_MS,
    aggregate_eligible,
    batch_hours,
    block_ranges,
    due_hours,
    usage_eligible,
)

CELL9 = h3.str_to_int("89283082803ffff")
CELL7 = h3cells.parent(CELL9, 7)
CELL5 = h3cells.parent(CELL9, 5)
DAY = (20 * 24 * HOUR_MS, 21 * 24 * HOUR_MS)


@pytest.mark.parametrize(
    "q,res,by_device,bucket,span,stored,ok",
    [
        ({"cell": format(CELL5, "x")}, 7, False, "hour", DAY, [8, 9], True),
        ({"cell": format(CELL5, "x")}, 5, False, "day", DAY, [6, 8], True),
        ({"cell": format(CELL7, "x"), "kind": "air"}, 7, False, "hour", DAY, [7, 9], True),
        ({"cell": format(CELL5, "x")}, 7, False, "minute", DAY, [8], False),  # minutes need readings
        ({"cell": format(CELL5, "x")}, 8, False, "hour", DAY, [8], False),  # finer than a block
        ({"cell": format(CELL9, "x")}, 7, False, "hour", DAY, [9], False),  # cell finer than a block
        ({"cell": format(CELL7, "x")}, 7, False, "hour", DAY, [6, 9], False),  # data coarser than cell
        ({"cell": format(CELL5, "x")}, 7, False, "hour", (DAY[0] + 1, DAY[1]), [8], False),  # part hour
        ({"cell": format(CELL5, "x")}, 7, False, "hour", (DAY[0], DAY[1] - 60_000), [8], False),
        ({"bbox": "13.3,52.4,13.4,52.5"}, 7, False, "hour", DAY, [8], False),  # areas go raw
        ({"device": "ab" * 32}, None, True, "hour", DAY, [8], False),
        ({"device": "ab" * 32, "cell": format(CELL5, "x")}, 7, False, "hour", DAY, [8], False),
    ],
)
def test_aggregate_eligible(
    q: dict[str, str],
    res: int | None,
    by_device: bool,
    bucket: str,
    span: tuple[int, int],
    stored: list[int],
    ok: bool,
) -> None:
    f = parse_where(q).between(*span)
    assert aggregate_eligible(f, res=res, by_device=by_device, bucket=bucket, stored_res=stored) is ok


def test_no_place_and_no_res_is_eligible() -> None:
    f = parse_where({}, need_place=False).between(*DAY)
    assert aggregate_eligible(f, res=None, by_device=False, bucket="day", stored_res=[8])


@pytest.mark.parametrize(
    "genesis,length,ok",
    [(0, 24 * HOUR_MS, True), (5 * HOUR_MS, 12 * HOUR_MS, True), (1, HOUR_MS, False), (0, 4_000, False)],
)
def test_usage_needs_epochs_of_whole_hours(genesis: int, length: int, ok: bool) -> None:
    f = parse_where({"cell": format(CELL5, "x")}).between(*DAY)
    assert usage_eligible(f, genesis_ms=genesis, length_ms=length, stored_res=[8]) is ok
    area = parse_where({"bbox": "13.3,52.4,13.4,52.5"}).between(*DAY)
    assert not usage_eligible(area, genesis_ms=genesis, length_ms=length, stored_res=[8])


def test_block_ranges_hold_exactly_the_blocks_inside_the_cell() -> None:
    rnd = random.Random(3)
    parent = h3.int_to_str(CELL5)
    inside = {h3.str_to_int(c) for r in (5, 6, 7) for c in h3.cell_to_children(parent, r)}
    # Neighbours' blocks at every resolution up to 7: none may fall in a range.
    outside = {
        h3.str_to_int(c)
        for n in h3.grid_ring(parent, 1)
        for r in (5, 6, 7)
        for c in rnd.sample(sorted(h3.cell_to_children(n, r)), min(40, 7 ** (r - 5)))
    }
    ranges = block_ranges(CELL5)
    assert len(ranges) == 3
    assert all(any(lo <= b <= hi for lo, hi in ranges) for b in inside)
    assert not any(lo <= b <= hi for lo, hi in ranges for b in outside)
    assert block_ranges(None) == [(-(1 << 63), (1 << 63) - 1)]
    with pytest.raises(ValueError):
        block_ranges(CELL9)


def test_due_hours_are_ended_newest_first_and_capped() -> None:
    now = 100 * HOUR_MS + 5
    dirty = [(97 * HOUR_MS, 1), (100 * HOUR_MS, 4), (99 * HOUR_MS, 2), (98 * HOUR_MS, 9)]
    assert due_hours(dirty, now, 10) == [(99 * HOUR_MS, 2), (98 * HOUR_MS, 9), (97 * HOUR_MS, 1)]
    assert due_hours(dirty, now, 2) == [(99 * HOUR_MS, 2), (98 * HOUR_MS, 9)]
    assert due_hours(dirty, 101 * HOUR_MS, 1) == [(100 * HOUR_MS, 4)]  # the hour ended exactly now
    assert due_hours([], now, 5) == []


def test_batch_hours_span_each_packet_from_its_first_to_its_last_reading() -> None:
    def pkt(*ts: int) -> tuple[Reading, ...]:
        return tuple(Reading(t, 0.0, 0.0, {}) for t in ts)

    assert batch_hours([]) == [] and batch_hours([pkt()]) == []
    packets = [pkt(HOUR_MS + 1, HOUR_MS + 5), pkt(7, 9), pkt(2 * HOUR_MS - 1, 4 * HOUR_MS), pkt(HOUR_MS)]
    assert batch_hours(packets) == [0, HOUR_MS, 2 * HOUR_MS, 3 * HOUR_MS, 4 * HOUR_MS]
