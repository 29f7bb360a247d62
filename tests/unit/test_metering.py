"""ingest/core/metering.py: the res-7 cell and epoch a reading is charged to, in Python and in SQL
(the SQL strings evaluated against the same inputs by a real PostgreSQL in the API tests; here their
Python twin's rules)."""

from __future__ import annotations

import h3
import pytest

from ingest.core import metering

GENESIS, LENGTH = 1_000_000, 60_000


def cell(res: int) -> int:
    return h3.str_to_int(h3.latlng_to_cell(48.85, 2.35, res))


@pytest.mark.parametrize(
    ("res", "expected_res"),
    [(9, 7), (8, 7), (7, 7), (6, 6), (15, 7)],
)
def test_meter_cell_is_the_res7_parent_or_the_cell_itself(res: int, expected_res: int) -> None:
    c = cell(res)
    assert metering.meter_cell(c) == h3.str_to_int(h3.cell_to_parent(h3.int_to_str(c), expected_res))


@pytest.mark.parametrize(
    ("ts", "epoch"),
    [(0, 0), (GENESIS - 1, 0), (GENESIS, 1), (GENESIS + LENGTH - 1, 1), (GENESIS + LENGTH, 2)],
)
def test_epoch_of(ts: int, epoch: int) -> None:
    assert metering.epoch_of(ts, GENESIS, LENGTH) == epoch


def test_usage_groups_readings_by_cell7_and_epoch() -> None:
    a, b = cell(9), h3.str_to_int(h3.latlng_to_cell(35.68, 139.69, 9))
    usage = metering.usage_of(
        [(a, GENESIS), (a, GENESIS + 5), (a, GENESIS + LENGTH), (b, GENESIS)], GENESIS, LENGTH
    )
    assert usage == {
        (metering.meter_cell(a), 1): 2,
        (metering.meter_cell(a), 2): 1,
        (metering.meter_cell(b), 1): 1,
    }


@pytest.mark.parametrize(("readings", "units"), [(0, 0), (1, 1), (10, 1), (11, 2), (100, 10)])
def test_aggregated_units_round_up(readings: int, units: int) -> None:
    assert metering.aggregated_units(readings) == units
