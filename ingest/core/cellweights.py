"""A cell's weight factors for one epoch, from what was stored before it. Pure (no I/O); the store
gathers the inputs in SQL (ingest/adapters/store/epochs.py).

- freshness: 1/`refill_epochs` in the epoch after the cell last paid anyone, refilling linearly to
  1.0 after `refill_epochs` epochs (geo.freshness_bps), so fleets are paid for new and stale ground;
  1.0 for a cell where a stationary device (class speed 0) earns, whose value is its unbroken series.
- demand: 1.0 + units / `demand_units`, capped at `demand_cap_bps`, where units are buyers' metered
  usage (table `usage_demand`, resolution 7) of the cell's resolution-7 cell plus the rest of its
  resolution-5 region's usage spread over the region's 49 resolution-7 cells (a buyer querying the
  neighbourhood wants this cell a little too), written in the last `demand_epochs` epochs.
- boost: the operator's signed factor in force (ingest/core/boosts.py), else 1.0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ingest.core import h3cells
from ingest.core.geo import BPS, freshness_bps
from ingest.core.metering import meter_cell
from ingest.core.rewards import CellFactors
from ingest.model import CoverageRow

REGION_RES = 5
CELLS_PER_REGION = 7 ** (7 - REGION_RES)  # resolution-7 cells in one resolution-5 region


@dataclass(frozen=True, slots=True)
class DemandParams:
    epochs: int = 7  # D: usage of the last D epochs counts
    units: int = 1_000  # usage units that add 1.0 to a cell's demand
    cap_bps: int = 3 * BPS  # demand never exceeds this

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.units < 1 or self.cap_bps < BPS:
            raise ValueError(f"demand needs epochs >= 1, units >= 1, cap >= {BPS} bps, got {self}")


def region_of(cell7: int) -> int | None:
    return h3cells.parent(cell7, REGION_RES) if h3cells.res_of(cell7) >= REGION_RES else None


def demand_bps(cell: int, usage7: Mapping[int, int], usage5: Mapping[int, int], p: DemandParams) -> int:
    """The cell's demand factor from usage per resolution-7 cell and per resolution-5 region."""
    at = meter_cell(cell)
    region = region_of(at)
    own = usage7.get(at, 0)
    rest = usage5.get(region, 0) - own if region is not None else 0
    units = own + rest // CELLS_PER_REGION
    return min(p.cap_bps, BPS + BPS * units // p.units)


def regions(usage7: Mapping[int, int]) -> dict[int, int]:
    """Usage per resolution-5 region (the sum of its resolution-7 cells)."""
    out: dict[int, int] = {}
    for cell7, units in usage7.items():
        region = region_of(cell7)
        if region is not None:
            out[region] = out.get(region, 0) + units
    return out


def stationary_cells(rows: Iterable[CoverageRow], stationary_classes: set[int]) -> set[int]:
    """Cells where a device of a stationary class has clean readings this epoch."""
    return {r.cell for r in rows if r.hw_class in stationary_classes and r.readings > 0}


def cell_factors(
    cells: Iterable[int],
    epoch: int,
    *,
    last_paid: Mapping[int, int],
    stationary: set[int],
    usage7: Mapping[int, int],
    boosts: Mapping[int, int],
    refill_epochs: int,
    demand: DemandParams,
) -> dict[int, CellFactors]:
    """Factors per cell. `last_paid`: the last epoch before `epoch` in which the cell paid anyone
    (absent: never, or longer ago than the refill); `stationary`: cells where a stationary device
    earns this epoch; `boosts`: factor bps per boosted cell."""
    usage5 = regions(usage7)
    out = {}
    for cell in sorted(cells):
        fresh = BPS if cell in stationary else freshness_bps(last_paid.get(cell), epoch, refill_epochs)
        out[cell] = CellFactors(
            boost=boosts.get(cell, BPS),
            freshness=fresh,
            demand=demand_bps(cell, usage7, usage5, demand),
        )
    return out
