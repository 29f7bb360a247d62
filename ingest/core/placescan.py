"""Where a place's readings are, pure: a filter's place (cell at any resolution, bbox, polygon) → the
res-7 blocks of the readings_block_ts index to scan, and which rows of each belong to the place.

A reading's block is `block_of(cell)`: its res-7 parent, or its own cell when it is stored coarser
(migration 013 `depin_cell7`). One block's rows come out of the index in time order, so a page over a
place is a merge of one short ordered scan per block (ingest/adapters/store/queries.py).

Which rows of a block are in the place (`BlockScan.holds`, the same test in SQL):

- rows stored at the scan's `root` resolution or finer whose cell lies under `root` (the index
  hierarchy: every child of a cell is in the cell, as `cell=` has always meant), and, when `exact`,
  whose position also passes the exact test (a bbox or polygon);
- when `coarse`, rows stored coarser than `root` whose position lies in the query cell's hexagon (data
  coarser than the query: `h3cells` children stick out of their parent a little, so the cell holding
  the query cell and its neighbours are scanned).

The stored resolutions the scans are built for are those the readings hold, with every resolution finer
than 7 counted as 7 (they share their blocks). More than MAX_BLOCKS blocks (a place coarser than res 3)
gives block *ranges* instead, which the SQL must sort (docs/DESIGN.md §8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h3

from ingest.core import h3cells
from ingest.core.readfilter import Area, ReadingFilter, Where, compact_cover, cover_res

BLOCK_RES = 7
MAX_BLOCKS = 2_401  # 7**4: the res-7 blocks of a res-3 cell
_INT64_MAX = (1 << 63) - 1


def block_of(cell: int) -> int:
    """The SQL function depin_cell7 (migration 013): the res-7 parent, or the cell if coarser."""
    return h3cells.parent(cell, BLOCK_RES) if h3cells.res_of(cell) > BLOCK_RES else cell


def under_mask(res: int) -> int:
    """The bits two cells share when one lies under the other's ancestor at `res` (digits 1..res and
    the base cell; not the resolution field)."""
    return ~h3cells.RES_MASK & ~h3cells.tail(res) & _INT64_MAX


@dataclass(frozen=True, slots=True)
class BlockScan:
    lo: int  # the block (depin_cell7 value) scanned; `hi` > `lo` only in the range fallback
    hi: int
    root: int
    exact: bool
    coarse: bool

    @property
    def root_res(self) -> int:
        return h3cells.res_of(self.root)

    def holds(self, cell: int, inside: bool) -> bool:
        """Is a reading stored at `cell` in the place? `inside`: its position passes the exact test."""
        if not self.lo <= block_of(cell) <= self.hi:
            return False
        res, mask = h3cells.res_of(cell), under_mask(self.root_res)
        if res >= self.root_res and cell & mask == self.root & mask:
            return inside or not self.exact
        return self.coarse and res < self.root_res and inside


def stored_blocks(stored_res: Sequence[int]) -> list[int]:
    """The stored resolutions as the blocks see them: those finer than 7 count as 7."""
    return sorted({min(s, BLOCK_RES) for s in stored_res})


def place_scans(where: Where | ReadingFilter, stored_res: Sequence[int]) -> list[BlockScan]:
    """The block scans holding every reading of the filter's place, for readings stored at
    `stored_res`, sorted by block; empty when the filter has no place (device only)."""
    stored = stored_blocks(stored_res)
    if where.cell is not None:
        scans = _cell_scans(where.cell, stored)
    elif where.area is not None:
        scans = _area_scans(where.area, stored)
    else:
        return []
    return sorted(scans, key=lambda s: (s.lo, s.root))


def needs_exact_test(scans: Sequence[BlockScan]) -> bool:
    return any(s.exact or s.coarse for s in scans)


def _children(cell: int, res: int) -> list[int]:
    if h3cells.res_of(cell) == res:
        return [cell]
    return [h3.str_to_int(c) for c in h3.cell_to_children(h3.int_to_str(cell), res)]


def _disk(cell: int) -> list[int]:
    return [h3.str_to_int(c) for c in h3.grid_disk(h3.int_to_str(cell), 1)]


def _count(cell: int, res: int) -> int:
    return 7 ** (res - h3cells.res_of(cell))  # pentagons have fewer: an upper bound is enough here


def _whole(cell: int, res: int, *, exact: bool, budget: list[int]) -> list[BlockScan]:
    """The blocks at `res` under `cell`, each scanned whole: one scan per block while the budget of
    MAX_BLOCKS lasts, then one range (the children are one contiguous index range)."""
    if budget[0] >= _count(cell, res):
        blocks = _children(cell, res)
        budget[0] -= len(blocks)
        return [BlockScan(b, b, b, exact, False) for b in blocks]
    lo, hi = h3cells.child_range(cell, res)
    return [BlockScan(lo, hi, cell, exact, False)]


def _cell_scans(cell: int, stored: list[int]) -> list[BlockScan]:
    own = h3cells.res_of(cell)
    budget = [MAX_BLOCKS]
    out: list[BlockScan] = []
    for s in stored:
        if own <= s:  # stored at s (or finer than 7 when s is 7) under the cell: its blocks whole
            out += _whole(cell, s, exact=False, budget=budget)
        elif s < BLOCK_RES:  # stored coarser than the cell: the cell holding it and its neighbours
            out += [BlockScan(c, c, c, True, False) for c in _disk(h3cells.parent(cell, s))]
        else:  # stored at res ≥ 7 but the cell is finer than 7: its block (rows under it, and coarser
            # rows by position) and the blocks around it (coarser rows by position)
            out += [BlockScan(b, b, cell, False, True) for b in _disk(block_of(cell))]
    return out


def _area_scans(area: Area, stored: list[int]) -> list[BlockScan]:
    if not stored:
        return []
    budget = [MAX_BLOCKS]
    cover = compact_cover(area, cover_res(area.km2(), stored[0]))
    return [
        scan
        for c in cover
        for s in stored
        if h3cells.res_of(c) <= s
        for scan in _whole(c, s, exact=True, budget=budget)
    ]


def blocks_whole(scans: Sequence[BlockScan]) -> bool:
    """Does every scan read one block (so the SQL can read each in time order)?"""
    return all(s.lo == s.hi for s in scans)
