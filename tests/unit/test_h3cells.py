"""ingest/core/h3cells.py against the h3 library: parents, child ranges, and the SQL expression's
constants (evaluated here with Python's integers, which have the same two's-complement bit semantics
for these non-negative values)."""

from __future__ import annotations

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.core import h3cells

lat = st.floats(min_value=-85, max_value=85, allow_nan=False)
lon = st.floats(min_value=-180, max_value=180, allow_nan=False)


def cell_at(la: float, lo: float, res: int) -> int:
    return h3.str_to_int(h3.latlng_to_cell(la, lo, res))


@settings(max_examples=300, deadline=None)
@given(la=lat, lo=lon, res=st.integers(0, 15), data=st.data())
def test_parent_is_h3s(la: float, lo: float, res: int, data: st.DataObject) -> None:
    cell = cell_at(la, lo, res)
    p = data.draw(st.integers(0, res))
    expected = h3.str_to_int(h3.cell_to_parent(h3.int_to_str(cell), p))
    assert h3cells.parent(cell, p) == expected
    assert h3cells.res_of(cell) == res


@settings(max_examples=60, deadline=None)
@given(la=lat, lo=lon, own=st.integers(0, 7), depth=st.integers(0, 3))
def test_child_range_holds_exactly_the_children(la: float, lo: float, own: int, depth: int) -> None:
    cell = cell_at(la, lo, own)
    res = own + depth
    lo_i, hi_i = h3cells.child_range(cell, res)
    children = sorted(h3.str_to_int(c) for c in h3.cell_to_children(h3.int_to_str(cell), res))
    assert children[0] >= lo_i and children[-1] <= hi_i
    # A neighbour's children (same resolution) are all outside the range.
    for n in h3.grid_ring(h3.int_to_str(cell), 1):
        for c in h3.cell_to_children(n, res):
            assert not lo_i <= h3.str_to_int(c) <= hi_i


def test_parent_sql_is_the_same_bit_operation() -> None:
    cell = cell_at(52.52, 13.405, 9)
    expr = h3cells.parent_sql("cell", 7)
    value = eval(expr.replace("cell", str(cell)))
    assert value == h3.str_to_int(h3.cell_to_parent(h3.int_to_str(cell), 7))


@pytest.mark.parametrize(("res", "parent_res"), [(7, 8), (0, 1)])
def test_a_finer_parent_is_refused(res: int, parent_res: int) -> None:
    with pytest.raises(ValueError, match="not coarser"):
        h3cells.parent(cell_at(1.0, 2.0, res), parent_res)
