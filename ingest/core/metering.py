"""What a data query costs, pure: usage units per (H3 cell at resolution 7, epoch of the readings), the
grain of the `usage` table (GET /v1/usage). The rewards read the same units by the epoch they were
written in (`usage_demand`, ingest/adapters/store/keys.py) to find the cells buyers want.

A reading returned (a page of /v1/readings, a row of an export) costs `READING_UNITS`; a reading
summarised by an aggregate costs `AGGREGATED_UNITS_PER` times less (rounded up per cell and epoch), so
a day of hourly averages does not cost a day of raw rows. A reading of a class coarser than resolution
7 is metered at its own cell. The same rules in SQL (`cell7_sql`, `epoch_sql`) serve queries whose rows
never reach Python (exports, aggregates).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ingest.core import h3cells

METER_RES = 7
READING_UNITS = 1
AGGREGATED_UNITS_PER = 10  # readings summarised per unit


def meter_cell(cell: int) -> int:
    """The cell a reading's usage is charged to: its resolution-7 parent (or itself if coarser)."""
    return h3cells.parent(cell, METER_RES) if h3cells.res_of(cell) >= METER_RES else cell


def epoch_of(ts_ms: int, genesis_ms: int, length_ms: int) -> int:
    """The epoch a reading's timestamp falls in; 0 before genesis (as ingest/core/schedule.py)."""
    return 0 if ts_ms < genesis_ms else (ts_ms - genesis_ms) // length_ms + 1


def usage_of(
    readings: Iterable[tuple[int, int]], genesis_ms: int, length_ms: int
) -> Counter[tuple[int, int]]:
    """Units per (metered cell, epoch) for readings given as (cell, ts_ms) pairs, one unit each."""
    usage: Counter[tuple[int, int]] = Counter()
    metered: dict[int, int] = {}  # a page holds few distinct cells: each one's parent computed once
    for cell, ts_ms in readings:
        at = metered.get(cell)
        if at is None:
            at = metered[cell] = meter_cell(cell)
        usage[(at, epoch_of(ts_ms, genesis_ms, length_ms))] += READING_UNITS
    return usage


def aggregated_units(readings: int) -> int:
    """Units for `readings` summarised in one (cell, epoch): at least 1 when any was used."""
    return -(-readings // AGGREGATED_UNITS_PER)


def cell7_sql(column: str) -> str:
    """`meter_cell` as a SQL expression over a bigint cell column."""
    res = f"(({column} >> {h3cells.RES_SHIFT}) & 15)"
    return f"(CASE WHEN {res} >= {METER_RES} THEN {h3cells.parent_sql(column, METER_RES)} ELSE {column} END)"


def epoch_sql(ts_column: str, genesis_ms: int, length_ms: int) -> str:
    """`epoch_of` as a SQL expression (bigint) over a timestamptz column."""
    ms = f"(floor(extract(epoch from {ts_column}) * 1000)::bigint)"
    return f"(CASE WHEN {ms} < {genesis_ms} THEN 0 ELSE ({ms} - {genesis_ms}) / {length_ms} + 1 END)"
