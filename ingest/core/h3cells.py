"""H3 cell arithmetic on the 64-bit index itself, so PostgreSQL can do it without an H3 extension.

An H3 cell index (docs: h3geo.org, "H3 index bit layout") holds its resolution in bits 52–55 and one
3-bit digit per resolution 1–15 below that, digit r at bits 3·(15−r) … 3·(15−r)+2; the digits after the
cell's own resolution are all 7 (0b111). Two consequences the API relies on:

- the parent at resolution p is the index with the resolution field set to p and the digits after p
  set to 7 — a few bit operations, written once here for Python (`parent`) and SQL (`parent_sql`);
- the children at resolution r of a cell P (r ≥ res(P)) are exactly the valid indexes between
  `child_range(P, r)` — P's digits, then digits 0…6, then 7s — so "every reading in P" at a stored
  resolution r is one range scan of the `cell` index, not a list of 7^(r−res(P)) cells.

Every function is checked against the `h3` library in tests/unit/test_h3cells.py.
"""

from __future__ import annotations

RES_SHIFT = 52
RES_MASK = 0xF << RES_SHIFT
MAX_RES = 15


def res_of(cell: int) -> int:
    return (cell & RES_MASK) >> RES_SHIFT


def tail(res: int) -> int:
    """The bits of the digits after resolution `res`."""
    return (1 << (3 * (MAX_RES - res))) - 1


def parent(cell: int, res: int) -> int:
    """`h3.cell_to_parent` on the integer index (`res` ≤ the cell's resolution)."""
    if not 0 <= res <= res_of(cell):
        raise ValueError(f"resolution {res} is not coarser than the cell's {res_of(cell)}")
    return (cell & ~RES_MASK & ~tail(res)) | (res << RES_SHIFT) | tail(res)


def child_range(cell: int, res: int) -> tuple[int, int]:
    """The smallest and largest index of `cell`'s children at resolution `res` (≥ the cell's own); every
    valid index in between is such a child."""
    own = res_of(cell)
    if not own <= res <= MAX_RES:
        raise ValueError(f"resolution {res} is not finer than the cell's {own}")
    base = (cell & ~RES_MASK) | (res << RES_SHIFT)
    free = tail(own) & ~tail(res)  # the digits own+1 … res: 0 in the smallest child, 6 in the largest
    lo = base & ~free
    hi = lo | (free & _sixes(own, res))
    return lo, hi


def _sixes(own: int, res: int) -> int:
    six = 0
    for r in range(own + 1, res + 1):
        six |= 0b110 << (3 * (MAX_RES - r))
    return six


def parent_sql(column: str, res: int) -> str:
    """A SQL expression (bigint) for the parent at resolution `res` of the cell in `column`; the caller
    makes sure every cell in the column is at resolution ≥ `res`."""
    if not 0 <= res <= MAX_RES:
        raise ValueError(f"not an H3 resolution: {res}")
    keep = ~RES_MASK & ~tail(res) & 0x7FFF_FFFF_FFFF_FFFF
    return f"(({column} & {keep}) | {(res << RES_SHIFT) | tail(res)})"
