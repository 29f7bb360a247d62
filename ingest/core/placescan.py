"""Where a place's readings are, pure: a filter's place (cell at any resolution, bbox, polygon) → the
res-7 blocks of the readings_block_ts index to scan, and which rows of each belong to the place.

A reading's block is `block_of(cell)`: its res-7 parent, or its own cell when it is stored coarser
(migration 013 `depin_cell7`). The index is (block, ts, cell): one block's rows come out in time order,
so a page over a place merges one short ordered scan per block (ingest/adapters/store/queries.py),
and a scan that wants only some cells of its block tests `cell = ANY(…)` on the index entries.

What a place holds, for readings stored at resolution s (the resolutions in `readings_resolutions`):

- a cell Q at resolution R: if s ≥ R, the readings stored under Q (`cell=` follows the H3 hierarchy:
  Q's whole blocks when R ≤ 7, else Q's children at s); if s < R (data coarser than the query), the
  readings whose position lies in Q's hexagon, found in the res-s cell holding Q and its neighbours (H3
  children stick out of their parent a little) — those cells are *edge* cells: their rows pass the
  exact position test;
- a bbox or polygon: the readings whose position lies inside, found in the res-s cells the shape
  overlaps (h3, "overlap"); the cells entirely inside need no test, the others are edge cells. A shape
  that would need more than MAX_CELLS cells at s is covered by whole blocks instead, every row tested.

`BlockScan.holds` is that rule for one stored reading; the SQL is the same test. More than MAX_BLOCKS
blocks (a cell coarser than res 3) gives block *ranges*, which the SQL must sort (docs/DESIGN.md §8).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import h3

from ingest.core import h3cells
from ingest.core.readfilter import (
    Area,
    FilterError,
    ReadingFilter,
    Where,
    compact_cover,
    cover_res,
    overlap_cells,
)

BLOCK_RES = 7
MAX_BLOCKS = 2_401  # 7**4: the res-7 blocks of a res-3 cell
MAX_CELLS = 20_000  # cells listed for one place (a cell's children, an area's cover at one resolution)


class PlaceTooFine(FilterError):
    """The place needs more than MAX_CELLS cells at a stored resolution (a cell finer than 7 over data
    stored five or more resolutions finer still)."""


def block_of(cell: int) -> int:
    """The SQL function depin_cell7 (migration 013): the res-7 parent, or the cell if coarser."""
    return h3cells.parent(cell, BLOCK_RES) if h3cells.res_of(cell) > BLOCK_RES else cell


@dataclass(frozen=True, slots=True)
class BlockScan:
    lo: int  # the block scanned (a depin_cell7 value); `hi` > `lo` only for a block range
    hi: int
    cells: tuple[int, ...] | None  # None: every row of the block; else the rows stored at these cells
    edge: frozenset[int]  # rows stored at these cells must pass the exact position test …
    exact: bool  # … or, if set, every row must

    def holds(self, cell: int, inside: bool) -> bool:
        """Is a reading stored at `cell` in the place? `inside`: its position passes the exact test."""
        if not self.lo <= block_of(cell) <= self.hi:
            return False
        if self.cells is not None and cell not in self.cells:
            return False
        return inside or not (self.exact or cell in self.edge)


class _Blocks:
    """The scans being built, one per block: whole blocks (None) or their listed cells."""

    def __init__(self) -> None:
        self.whole: dict[int, bool] = {}  # block → every row tested
        self.ranges: list[BlockScan] = []
        self.cells: dict[int, dict[int, bool]] = {}  # block → cell → edge

    def add_whole(self, blocks: Iterable[int], *, exact: bool) -> None:
        for b in blocks:
            self.whole[b] = self.whole.get(b, False) or exact

    def add_cells(self, cells: Iterable[int], *, edge: bool) -> None:
        for c in cells:
            listed = self.cells.setdefault(block_of(c), {})
            listed[c] = listed.get(c, False) or edge

    def scans(self) -> list[BlockScan]:
        # A whole block holds its listed cells too (never both in practice: see `place_scans`).
        out = [BlockScan(b, b, None, frozenset(), exact) for b, exact in self.whole.items()]
        out += [
            BlockScan(b, b, tuple(sorted(cells)), frozenset(c for c, e in cells.items() if e), False)
            for b, cells in self.cells.items()
            if b not in self.whole
        ]
        return sorted(self.ranges + out, key=lambda s: s.lo)


def place_scans(where: Where | ReadingFilter, stored_res: Sequence[int]) -> list[BlockScan]:
    """The block scans holding every reading of the filter's place, for readings stored at
    `stored_res`, sorted by block; empty when the filter has no place (device only) or nothing is
    stored. Raises PlaceTooFine."""
    stored = sorted(set(stored_res))
    blocks = _Blocks()
    if where.cell is not None:
        _cell_scans(where.cell, stored, blocks)
    elif where.area is not None:
        _area_scans(where.area, stored, blocks)
    return blocks.scans()


def blocks_whole(scans: Sequence[BlockScan]) -> bool:
    """Does every scan read one block (so the SQL can read each in time order)?"""
    return all(s.lo == s.hi for s in scans)


def _children(cell: int, res: int) -> list[int]:
    if 7 ** (res - h3cells.res_of(cell)) > MAX_CELLS:
        raise PlaceTooFine(
            "cell",
            f"cell {format(cell, 'x')} holds more than {MAX_CELLS:,} cells at resolution {res}, where"
            " readings are stored: ask for a smaller cell",
        )
    if h3cells.res_of(cell) == res:
        return [cell]
    return [h3.str_to_int(c) for c in h3.cell_to_children(h3.int_to_str(cell), res)]


def _disk(cell: int) -> list[int]:
    return [h3.str_to_int(c) for c in h3.grid_disk(h3.int_to_str(cell), 1)]


def _whole_blocks(cell: int, res: int, blocks: _Blocks, *, exact: bool) -> None:
    """Every block at `res` (≤ 7) under `cell`: one scan each, or one range when there are more than
    MAX_BLOCKS (the children are one contiguous index range)."""
    if 7 ** (res - h3cells.res_of(cell)) <= MAX_BLOCKS:
        blocks.add_whole(_children(cell, res), exact=exact)
    else:
        lo, hi = h3cells.child_range(cell, res)
        blocks.ranges.append(BlockScan(lo, hi, None, frozenset(), exact))


def _cell_scans(cell: int, stored: list[int], blocks: _Blocks) -> None:
    own = h3cells.res_of(cell)
    for s in stored:
        if s < own:  # stored coarser than the cell: the cell holding it and its neighbours, by position
            holders = _disk(h3cells.parent(cell, s))
            if s < BLOCK_RES:
                blocks.add_whole(holders, exact=True)
            else:
                blocks.add_cells(holders, edge=True)
        elif own <= BLOCK_RES:  # stored under the cell: its whole blocks at min(s, 7)
            _whole_blocks(cell, min(s, BLOCK_RES), blocks, exact=False)
        else:  # stored under a cell finer than 7: its children at s, in its one block
            blocks.add_cells(_children(cell, s), edge=False)


def _area_scans(area: Area, stored: list[int], blocks: _Blocks) -> None:
    km2 = area.km2()
    for s in stored:
        if km2 / h3.average_hexagon_area(s, "km^2") > MAX_CELLS / 2:  # too many cells: whole blocks
            for c in compact_cover(area, cover_res(km2, min(s, BLOCK_RES))):
                _whole_blocks(c, min(s, BLOCK_RES), blocks, exact=True)
            continue
        cover = overlap_cells(area, s)
        inside = overlap_cells(area, s, contain="full")
        if s < BLOCK_RES:
            blocks.add_whole(inside, exact=False)
            blocks.add_whole(cover - inside, exact=True)
        else:
            blocks.add_cells(inside, edge=False)
            blocks.add_cells(cover - inside, edge=True)
